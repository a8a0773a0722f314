//! Asking the upstream: over UDP from the socket pool ([`super::pool`]: random source ports,
//! an ID never used twice on a socket), answers checked against the query they answer (ID and
//! the name's case, see [`UpstreamQuery`]), and the question asked again over TCP when the
//! answer comes back truncated. Why these guards and not others: the module docs of [`super`].

use anyhow::Context as _;
use hickory_proto::op::Message;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
    time::timeout,
};

use super::{frame, Forwarder, Transport};
use crate::dns::{
    counters::DnsCounters,
    message::{Question, UpstreamQuery},
};

/// The upstream's answer to a question.
pub(super) struct Answered {
    pub message: Message,
    /// A datagram that answered nothing (an unknown ID, or the query's ID without its
    /// question) arrived on the query's socket first: someone knows the port and may be forging.
    pub stray: bool,
}

impl Forwarder {
    pub(super) async fn ask_upstream(
        &self,
        question: &Question,
        transport: Transport,
    ) -> anyhow::Result<Answered> {
        let mut query = UpstreamQuery::new(question);
        let mut stray = false;
        if transport == Transport::Udp {
            let answered = timeout(self.config.upstream_timeout, self.ask_udp(&mut query))
                .await
                .context("timed out")??;
            if !answered.message.metadata.truncation {
                return Ok(answered);
            }
            stray = answered.stray;
            DnsCounters::bump(&self.counters.tcp_retries);
        }
        let wire = query.to_bytes().map_err(anyhow::Error::msg)?;
        let message = timeout(self.config.upstream_timeout, self.ask_tcp(&query, &wire))
            .await
            .context("timed out over TCP")??;
        Ok(Answered { message, stray })
    }

    async fn ask_udp(&self, query: &mut UpstreamQuery) -> anyhow::Result<Answered> {
        // The pool may give the query another ID (its own was taken on the socket it got).
        let mut lease = self.upstream_pool.lease(query)?;
        let wire = query.to_bytes().map_err(anyhow::Error::msg)?;
        lease.send(&wire).await?;
        // One byte past what the query allows shows an answer that broke the limit: cut there,
        // it fails to parse.
        let cut = query.udp_limit() + 1;
        loop {
            let datagram = lease
                .next_datagram()
                .await
                .context("the upstream socket failed")?;
            match query.check_answer(&datagram[..datagram.len().min(cut)]) {
                Ok(message) => {
                    return Ok(Answered {
                        message,
                        stray: lease.saw_stray(),
                    })
                }
                Err(err) => {
                    // Maybe a forgery: keep waiting for the real answer, until the timeout,
                    // and let no new query use a port someone found.
                    DnsCounters::bump(&self.counters.mismatched);
                    lease.retire_socket();
                    tracing::debug!("ignored a datagram from {}: {err}", self.config.upstream);
                }
            }
        }
    }

    async fn ask_tcp(&self, query: &UpstreamQuery, wire: &[u8]) -> anyhow::Result<Message> {
        let mut stream = TcpStream::connect(self.config.upstream).await?;
        stream.write_all(&frame(wire)?).await?;
        let len = stream.read_u16().await?;
        let mut bytes = vec![0u8; usize::from(len)];
        stream.read_exact(&mut bytes).await?;
        Ok(query.check_answer(&bytes)?)
    }
}
