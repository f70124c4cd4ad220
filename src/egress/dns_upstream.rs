//! The resolver's side towards the policy's upstream resolvers: one A question at a time, over
//! UDP, from sockets bound in the resolver's namespace ahead of time (a socket belongs to the
//! namespace it was created in, and the async runtime's threads may be in another one).
//!
//! Resolvers are asked in order, [`UPSTREAM_TIMEOUT`] each. Only an answer from the resolver
//! asked, with the question's id and name, is taken; anything else on the socket (a spoof
//! attempt, a late answer to an earlier question) is ignored. Questions in flight are bounded
//! by the number of sockets.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RecordType};
use tokio::net::UdpSocket;
use tokio::sync::Semaphore;

const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);

pub(crate) struct UpstreamPool {
    socks: Mutex<Vec<UdpSocket>>,
    limit: Semaphore,
}

impl UpstreamPool {
    pub(crate) fn new(socks: Vec<std::net::UdpSocket>) -> std::io::Result<UpstreamPool> {
        let n = socks.len();
        let mut out = Vec::with_capacity(n);
        for s in socks {
            s.set_nonblocking(true)?;
            out.push(UdpSocket::from_std(s)?);
        }
        Ok(UpstreamPool {
            socks: Mutex::new(out),
            limit: Semaphore::new(n),
        })
    }

    /// Asks `resolvers` in order for the A records of `name`; `None` when none answered in time.
    pub(crate) async fn ask(&self, resolvers: &[SocketAddr], name: &Name) -> Option<Message> {
        let _permit = self.limit.acquire().await.ok()?;
        let sock = self.socks.lock().ok()?.pop()?;
        let mut answer = None;
        for up in resolvers {
            if let Ok(Some(m)) =
                tokio::time::timeout(UPSTREAM_TIMEOUT, ask_one(&sock, *up, name)).await
            {
                answer = Some(m);
                break;
            }
        }
        if let Ok(mut socks) = self.socks.lock() {
            socks.push(sock);
        }
        answer
    }
}

async fn ask_one(sock: &UdpSocket, up: SocketAddr, name: &Name) -> Option<Message> {
    let mut id = [0u8; 2];
    getrandom::getrandom(&mut id).ok()?;
    let id = u16::from_ne_bytes(id);
    let mut m = Message::new();
    m.set_id(id)
        .set_message_type(MessageType::Query)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(true);
    m.add_query(Query::query(name.clone(), RecordType::A));
    sock.send_to(&m.to_vec().ok()?, up).await.ok()?;
    let mut buf = vec![0u8; 4096];
    loop {
        let (n, from) = sock.recv_from(&mut buf).await.ok()?;
        if from != up {
            continue;
        }
        let Ok(r) = Message::from_vec(&buf[..n]) else {
            continue;
        };
        let same_question = r
            .queries()
            .first()
            .is_some_and(|q| q.name().to_lowercase() == name.to_lowercase());
        if r.id() == id && r.message_type() == MessageType::Response && same_question {
            return Some(r);
        }
    }
}
