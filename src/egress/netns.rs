//! Network namespaces: entering one from a thread, and the `process` runtime's sandbox.
//!
//! A socket belongs to the namespace of the thread that created it, for its whole life. So the
//! netlink worker enters the namespace it programs once, and resolver sockets are created by a
//! short-lived thread that enters the namespace, binds, and hands the socket back.
//!
//! ## Process sandbox
//! When the gateway runs as root, a `process` server gets the same enforcement as a container:
//! [`ProcessNet::create`] makes a namespace `pcs-<tag><hash>` joined to the host by a veth pair
//! whose host side is `pc<tag><hash>` (the instance's interface naming that its rule set keys
//! on, see `names.rs`) with a /29 from the pool, and a default route through the host side. The
//! child's confinement helper enters it with `setns` ([`ProcessNet::path`]) and binds
//! [`ProcessNet::resolv_conf`] over its view's `/etc/resolv.conf` (what `ip netns exec` used to
//! do), so its only resolver is the gateway's. Setup uses the `ip` tool, which is what the brief
//! allows for setup; the firewall itself is programmed over netlink. The sandbox's
//! subnet is masqueraded by the table's `postrouting` chain (the veth attachment asks for it),
//! and [`super::host_forward`] lets its traffic through a host whose forward policy drops (as
//! Docker's does).

use std::fs::File;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::names::Names;
use super::ruleset;

/// Moves the calling thread into the network namespace at `path` (e.g. `/run/netns/NAME`).
pub fn enter(path: &Path) -> io::Result<()> {
    let f = File::open(path)?;
    nix::sched::setns(f.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
        .map_err(|e| io::Error::from_raw_os_error(e as i32))
}

/// Runs `f` on a fresh thread inside the namespace at `path` (or in the current one for
/// `None`), so the caller's own thread never changes namespace.
pub fn in_netns<T: Send + 'static>(
    path: Option<&Path>,
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    let path = path.map(Path::to_path_buf);
    std::thread::Builder::new()
        .name("portcullis-netns".into())
        .spawn(move || {
            if let Some(p) = &path {
                enter(p)?;
            }
            f()
        })?
        .join()
        .map_err(|_| io::Error::other("namespace helper thread panicked"))?
}

/// Whether this process may create namespaces and program nftables.
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

pub(super) fn ip(args: &[&str]) -> io::Result<()> {
    let out = Command::new("ip").args(args).output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// A server's namespace and veth pair. Dropping it removes both (and the resolv.conf).
#[derive(Debug)]
pub struct ProcessNet {
    pub netns: String,
    /// Host-side veth, the interface the rules key on.
    pub iface: String,
    /// Host address on the veth: the sandbox's gateway and resolver.
    pub gateway: Ipv4Addr,
    pub sandbox_addr: Ipv4Addr,
    resolv_dir: PathBuf,
    /// The host side is in this process's namespace, where [`host_forward`] opened it.
    host_forward: bool,
    /// Where the host side lives (`None`: this process's namespace).
    host_netns: Option<String>,
}

impl ProcessNet {
    /// Creates the namespace for `server` of the instance `names` on `subnet` (a /29 from the
    /// pool). `host_netns` is the namespace the host side lives in (`None`: the current one,
    /// the normal case; tests pass their router namespace).
    pub fn create(
        names: &Names,
        server: &str,
        subnet: (Ipv4Addr, u8),
        host_netns: Option<&str>,
    ) -> io::Result<ProcessNet> {
        let iface = names.iface(server);
        let netns = names.netns(server);
        let gateway = ruleset::gateway_of(subnet);
        let sandbox_addr = Ipv4Addr::from(u32::from(gateway) + 1);
        let resolv_dir = PathBuf::from("/etc/netns").join(&netns);
        let mut net = ProcessNet {
            netns: netns.clone(),
            iface: iface.clone(),
            gateway,
            sandbox_addr,
            resolv_dir: resolv_dir.clone(),
            host_forward: false,
            host_netns: host_netns.map(str::to_owned),
        };
        // A namespace or host-side interface of the same name is a leftover of an earlier
        // sandbox of this instance (the names are derived from the instance and the server,
        // and this gateway holds the instance), so it goes first.
        let _ = ip(&["netns", "del", &netns]);
        net.delete_host_side();
        // From here on, a failure drops `net`, which removes what was made so far.
        ip(&["netns", "add", &netns])?;
        let peer = "eth0";
        let host = |args: &[&str]| -> io::Result<()> {
            match host_netns {
                None => ip(args),
                Some(h) => {
                    let mut a = vec!["-n", h];
                    a.extend_from_slice(args);
                    ip(&a)
                }
            }
        };
        host(&[
            "link", "add", &iface, "type", "veth", "peer", "name", peer, "netns", &netns,
        ])?;
        let gw_cidr = format!("{gateway}/{}", subnet.1);
        let sb_cidr = format!("{sandbox_addr}/{}", subnet.1);
        host(&["addr", "add", &gw_cidr, "dev", &iface])?;
        host(&["link", "set", &iface, "up"])?;
        ip(&["-n", &netns, "addr", "add", &sb_cidr, "dev", peer])?;
        ip(&["-n", &netns, "link", "set", peer, "up"])?;
        ip(&["-n", &netns, "link", "set", "lo", "up"])?;
        ip(&[
            "-n",
            &netns,
            "route",
            "add",
            "default",
            "via",
            &gateway.to_string(),
        ])?;
        std::fs::create_dir_all(&resolv_dir)?;
        std::fs::write(
            resolv_dir.join("resolv.conf"),
            format!("# written by portcullis: the gateway's pinning resolver is the only one\nnameserver {gateway}\n"),
        )?;
        if host_netns.is_none() {
            net.host_forward = true;
            super::host_forward::open(&net.iface)?;
        }
        Ok(net)
    }

    /// Prefix for the child's command line.
    pub fn command_prefix(&self) -> Vec<String> {
        vec![
            "ip".into(),
            "netns".into(),
            "exec".into(),
            self.netns.clone(),
        ]
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.netns)
    }

    /// The sandbox's resolver configuration, which its children see as `/etc/resolv.conf`.
    pub fn resolv_conf(&self) -> PathBuf {
        self.resolv_dir.join("resolv.conf")
    }
}

impl ProcessNet {
    /// Deletes the host side of the veth pair (and so the pair), if it exists.
    fn delete_host_side(&self) {
        let _ = match &self.host_netns {
            None => ip(&["link", "del", &self.iface]),
            Some(h) => ip(&["-n", h, "link", "del", &self.iface]),
        };
    }
}

impl Drop for ProcessNet {
    fn drop(&mut self) {
        if self.host_forward {
            super::host_forward::close(&self.iface);
        }
        // The veth pair goes explicitly: deleting the namespace's name destroys it only when
        // nothing runs in the namespace any more, and a process that outlived its sandbox
        // (one that left the server's process group, say) would otherwise keep a link to the
        // host after this instance's rules for it are gone.
        self.delete_host_side();
        let _ = ip(&["netns", "del", &self.netns]);
        let _ = std::fs::remove_dir_all(&self.resolv_dir);
    }
}
