//! The way of an allowed A question once the resolver has judged it (see `dns`): the server's
//! cache first, then, only for a miss, its DNS budget, the upstream resolvers, the address
//! filter and the pin.
//!
//! 1. A cached answer is repeated with the seconds it has left ([`super::dns_cache`]).
//! 2. If the same name is being forwarded already, the question waits for that answer.
//! 3. Otherwise it takes a token of the server's budget ([`super::dns_budget`]); without one the
//!    sandbox gets REFUSED and nothing leaves.
//! 4. The upstream answer is filtered and pinned exactly as before the cache existed (`dns`):
//!    the answer goes out only after the kernel acknowledged the pins, and its TTL is at most
//!    the pin's lifetime minus one second.
//! 5. What may be kept is kept, for the questions that follow.
//!
//! Every question that reaches this path is counted in `/metrics` by outcome: `cached` (1, 2),
//! `forwarded` (3, 4) or `over_budget`.

use std::time::Instant;

use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{RData, Record};

use super::dns::{answer, reply, resolve, Allow, Ctx, MAX_SAMPLES};
use super::dns_cache::{self, Outcome, Turn};

pub(crate) async fn lookup(
    ctx: &Ctx,
    allow: &Allow,
    generation: u64,
    q: &Message,
    query: &Query,
    ports: &[Option<u16>],
) -> Message {
    let key = dns_cache::key(query.name());
    if let Some(hit) = ctx.cache.get(&key, Instant::now()) {
        count(ctx, "cached");
        return repeat(q, query, &hit);
    }
    match ctx.cache.join(&key) {
        Turn::Wait(rx) => match dns_cache::wait(rx).await {
            Some(o) => {
                count(ctx, "cached");
                repeat(q, query, &o)
            }
            None => reply(q, ResponseCode::ServFail),
        },
        Turn::Lead(lead) => {
            let (message, outcome) = forward(ctx, allow, q, query, ports).await;
            ctx.cache.put(generation, &key, &outcome, Instant::now());
            lead.finish(&ctx.cache, &key, outcome);
            message
        }
    }
}

/// Asks upstream (budget permitting) and pins; the answer for this question, and what the
/// questions that waited for it (and, if kept, those that follow) get.
async fn forward(
    ctx: &Ctx,
    allow: &Allow,
    q: &Message,
    query: &Query,
    ports: &[Option<u16>],
) -> (Message, Outcome) {
    let fail = |code| (reply(q, code), Outcome::failure(code));
    if !ctx.budget.take() {
        count(ctx, "over_budget");
        return fail(ResponseCode::Refused);
    }
    count(ctx, "forwarded");
    let Some(up) = ctx
        .upstream
        .ask(&ctx.settings.upstream_resolvers, query.name())
        .await
    else {
        return fail(ResponseCode::ServFail);
    };
    let received = Instant::now();
    let resolution = match resolve(allow, &ctx.settings, &up, query.name()) {
        Ok(r) => r,
        // NXDOMAIN, or REFUSED because the filter removed every address of an answer.
        Err(code @ ResponseCode::NXDomain) => {
            return (reply(q, code), Outcome::negative(code, &up, received))
        }
        Err(ResponseCode::Refused) if up.response_code() == ResponseCode::NoError => {
            let code = ResponseCode::Refused;
            return (reply(q, code), Outcome::negative(code, &up, received));
        }
        Err(code) => return fail(code),
    };
    if resolution.addrs.is_empty() {
        let code = ResponseCode::NoError;
        return (reply(q, code), Outcome::negative(code, &up, received));
    }
    let started = Instant::now();
    if ctx
        .pinner
        .pin(
            &ctx.server,
            allow.rules(),
            resolution.pins(ports),
            resolution.pin_for,
        )
        .await
        .is_err()
    {
        return fail(ResponseCode::ServFail);
    }
    if let Ok(mut s) = ctx.stats.lock() {
        if s.pin_samples.len() < MAX_SAMPLES {
            s.pin_samples.push(started.elapsed());
        }
    }
    // Counted from before the pin was asked for, so the kept answer ends no later than the
    // pin's lifetime minus one second, however long the kernel took.
    let outcome = Outcome::addresses(resolution.addrs.clone(), received, resolution.client_ttl);
    (answer(q, query, &resolution), outcome)
}

/// A kept (or shared) outcome as the answer to `q`: the same flattened form as a fresh one,
/// with the TTL counted down.
fn repeat(q: &Message, query: &Query, o: &Outcome) -> Message {
    let mut m = reply(q, o.code);
    let ttl = o.ttl_at(Instant::now());
    for a in &o.addrs {
        m.add_answer(Record::from_rdata(
            query.name().clone(),
            ttl,
            RData::A(A(*a)),
        ));
    }
    m
}

fn count(ctx: &Ctx, outcome: &'static str) {
    crate::metrics::global().egress_dns(&ctx.server, outcome);
}
