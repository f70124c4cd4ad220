//! The helper's processes: the supervisor in the gateway's PID namespace, PID 1 of the
//! server's namespace, and the server.
//!
//! ```text
//! gateway ── helper (supervisor: gateway's PID namespace; forwards signals, waits)
//!              └── PID 1 (builds the view, drops everything, reaps orphans)
//!                    └── PID 2: the server (exec)
//! ```
//! Why three: a new PID namespace only applies to the children of whoever made it, and the
//! server should not be PID 1 either (PID 1 must reap orphans and ignores default-action
//! signals). Everything stays in the helper's process group, which the gateway kills as one;
//! and when PID 1 exits, the kernel kills whatever is left in the namespace. PID 1 and the
//! server also die with their parent (`PR_SET_PDEATHSIG`).
//!
//! Exit status: the server's own code, or 128 + the signal that killed it.

use std::ffi::{CString, OsString};

use nix::errno::Errno;
use nix::sys::prctl;
use nix::sys::signal::{kill, signal, sigprocmask, SigHandler, SigSet, SigmaskHow, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{chdir, execvp, fork, ForkResult, Pid};

use super::credentials::{self, Holding};
use super::namespaces::{self, Isolation};
use super::{fds, mounts, seccomp, ConfineError, Confinement, SETUP_FAILED};

/// Passed on from the supervisor to PID 1 and from PID 1 to the server.
const FORWARDED: [Signal; 6] = [
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
];

pub fn run(args: Vec<OsString>) -> i32 {
    if let Err(e) = fds::close_inherited() {
        eprintln!("portcullis: cannot close inherited descriptors: {e}");
        return SETUP_FAILED;
    }
    let (spec, argv) = match parse(args) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("portcullis: {e}");
            return SETUP_FAILED;
        }
    };
    outcome(&spec, supervise(&spec, &argv))
}

/// The exit status for a step's result; a failure is said on stderr (the gateway's log).
fn outcome(spec: &Confinement, r: Result<i32, ConfineError>) -> i32 {
    r.unwrap_or_else(|e| {
        eprintln!(
            "portcullis: server `{}`: cannot confine it: {e}",
            spec.server
        );
        SETUP_FAILED
    })
}

fn parse(args: Vec<OsString>) -> Result<(Confinement, Vec<CString>), ConfineError> {
    let usage = || ConfineError::Invalid("usage: __confine JSON -- PROGRAM [ARGS...]".into());
    let mut it = args.into_iter();
    let json = it.next().ok_or_else(usage)?;
    let spec: Confinement = serde_json::from_str(&json.to_string_lossy())
        .map_err(|e| ConfineError::Invalid(format!("bad confinement: {e}")))?;
    if it.next().is_none_or(|s| s != "--") {
        return Err(usage());
    }
    let argv = it
        .map(|a| CString::new(a.into_encoded_bytes()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| ConfineError::Invalid("NUL byte in the command line".into()))?;
    if argv.is_empty() {
        return Err(usage());
    }
    Ok((spec, argv))
}

fn supervise(spec: &Confinement, argv: &[CString]) -> Result<i32, ConfineError> {
    let filters = seccomp::compile()?;
    if let Some(ns) = &spec.netns {
        namespaces::enter_net(ns)?;
    }
    let isolation = namespaces::unshare_private(spec.privileged)?;
    if isolation == Isolation::None {
        eprintln!(
            "portcullis: server `{}`: the kernel refused an unprivileged user namespace, so this server has no private mount view and no PID namespace; it runs as the gateway's user with no_new_privs, the seccomp filter and no inherited descriptors only. Run the gateway as root (or allow user namespaces) for the full sandbox.",
            spec.server
        );
    }
    // Blocked before the fork so that no signal is lost in between; waited for below.
    let mut waited = SigSet::empty();
    for s in FORWARDED {
        waited.add(s);
    }
    waited.add(Signal::SIGCHLD);
    let mut original = SigSet::empty();
    sigprocmask(SigmaskHow::SIG_BLOCK, Some(&waited), Some(&mut original))?;
    let supervisor = nix::unistd::getpid();
    // SAFETY: the helper is single-threaded, so the child may do anything after fork.
    match unsafe { fork() }.map_err(|e| ConfineError::sys("fork", e))? {
        ForkResult::Parent { child } => wait_for(child, &waited),
        ForkResult::Child => {
            let signals = Signals {
                waited: &waited,
                original: &original,
            };
            let r = pid1(spec, argv, isolation, &filters, signals, supervisor);
            std::process::exit(outcome(spec, r))
        }
    }
}

/// The signals the helper waits for, and the mask the server gets back.
#[derive(Clone, Copy)]
struct Signals<'a> {
    waited: &'a SigSet,
    original: &'a SigSet,
}

fn pid1(
    spec: &Confinement,
    argv: &[CString],
    isolation: Isolation,
    filters: &seccomp::Filters,
    signals: Signals<'_>,
    supervisor: Pid,
) -> Result<i32, ConfineError> {
    prctl::set_pdeathsig(Signal::SIGKILL)?;
    let holding = if spec.privileged || isolation == Isolation::Namespaces {
        Holding::Root
    } else {
        Holding::Unprivileged
    };
    if isolation == Isolation::Namespaces {
        mounts::build(&mounts::View {
            mounts: &spec.mounts,
            hide: &spec.hide,
            resolv_conf: spec.resolv_conf.as_deref(),
            sysfs: spec.netns.is_some() && spec.privileged,
        })?;
        namespaces::set_next_pid(supervisor.as_raw());
        mounts::lock_proc()?;
    }
    let switch = spec.privileged.then_some((spec.uid, spec.gid));
    credentials::drop_all(holding, switch)?;
    // A change of ids clears the parent-death signal.
    prctl::set_pdeathsig(Signal::SIGKILL)?;
    filters.apply()?;
    credentials::verify(holding, switch)?;
    if let Some(cwd) = &spec.cwd {
        chdir(cwd).map_err(|e| {
            ConfineError::Invalid(format!(
                "cannot enter the working directory {} as uid {}: {e}; make it readable and searchable for that user, or set `user` in the policy",
                cwd.display(),
                nix::unistd::getuid()
            ))
        })?;
    }
    // SAFETY: single-threaded; the child only resets signals and execs.
    match unsafe { fork() }.map_err(|e| ConfineError::sys("fork the server", e))? {
        ForkResult::Child => exec_server(argv, signals.original),
        ForkResult::Parent { child } => wait_for(child, signals.waited),
    }
}

fn exec_server(argv: &[CString], original: &SigSet) -> ! {
    let _ = prctl::set_pdeathsig(Signal::SIGKILL);
    // The helper is a Rust program, which ignores SIGPIPE; the server gets the defaults.
    for s in FORWARDED.iter().chain(&[Signal::SIGCHLD, Signal::SIGPIPE]) {
        // SAFETY: restoring the default disposition.
        let _ = unsafe { signal(*s, SigHandler::SigDfl) };
    }
    let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(original), None);
    let e = match execvp(&argv[0], argv) {
        Err(e) => e,
        Ok(never) => match never {},
    };
    let hint = match e {
        Errno::ENOENT => " (not found: give an absolute path, or put it on the gateway's PATH)",
        Errno::EACCES => " (not executable for this user: make the program and every directory above it readable and searchable, or set `user` in the policy)",
        _ => "",
    };
    eprintln!(
        "portcullis: cannot run `{}` as uid {}: {e}{hint}",
        argv[0].to_string_lossy(),
        nix::unistd::getuid()
    );
    std::process::exit(if e == Errno::ENOENT { 127 } else { 126 })
}

/// Forwards signals to `child` and reaps every child until `child` ends; its status.
fn wait_for(child: Pid, waited: &SigSet) -> Result<i32, ConfineError> {
    loop {
        let sig = waited.wait()?;
        if sig != Signal::SIGCHLD {
            let _ = kill(child, sig);
            continue;
        }
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) if pid == child => return Ok(code),
                Ok(WaitStatus::Signaled(pid, s, _)) if pid == child => return Ok(128 + s as i32),
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => break,
                Ok(_) | Err(Errno::EINTR) => continue,
                Err(e) => return Err(ConfineError::sys("wait", e)),
            }
        }
    }
}
