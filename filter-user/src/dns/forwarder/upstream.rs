//! Asking the upstream: one fresh socket per query (a random source port from the kernel),
//! answers checked against the query they answer (ID and the name's case, see
//! [`UpstreamQuery`]), and the question asked again over TCP when the answer comes back
//! truncated. Why these guards and not others: the module docs of [`super`].

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use anyhow::Context as _;
use hickory_proto::op::Message;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpStream, UdpSocket},
    time::timeout,
};

use super::{frame, Forwarder, Transport};
use crate::dns::{
    counters::DnsCounters,
    message::{Question, UpstreamQuery},
};

impl Forwarder {
    pub(super) async fn ask_upstream(
        &self,
        question: &Question,
        transport: Transport,
    ) -> anyhow::Result<Message> {
        let query = UpstreamQuery::new(question);
        let wire = query.to_bytes().map_err(anyhow::Error::msg)?;
        if transport == Transport::Udp {
            let answer = timeout(self.config.upstream_timeout, self.ask_udp(&query, &wire))
                .await
                .context("timed out")??;
            if !answer.metadata.truncation {
                return Ok(answer);
            }
            DnsCounters::bump(&self.counters.tcp_retries);
        }
        timeout(self.config.upstream_timeout, self.ask_tcp(&query, &wire))
            .await
            .context("timed out over TCP")?
    }

    async fn ask_udp(&self, query: &UpstreamQuery, wire: &[u8]) -> anyhow::Result<Message> {
        // Port 0: the kernel picks a random ephemeral port, new for every query. Connecting
        // makes the kernel drop datagrams from anyone but the upstream.
        let socket = UdpSocket::bind(unspecified(self.config.upstream)).await?;
        socket.connect(self.config.upstream).await?;
        socket.send(wire).await?;
        // The upstream answers within the payload size the query advertises (512 without EDNS),
        // or sets TC. One byte more shows an answer that broke that rule: it is cut short,
        // fails to parse, and is ignored like any stray datagram.
        let mut buffer = vec![0u8; query.udp_limit() + 1];
        loop {
            let len = socket.recv(&mut buffer).await?;
            match query.check_answer(&buffer[..len]) {
                Ok(answer) => return Ok(answer),
                Err(err) => {
                    // Maybe a forgery: keep waiting for the real answer, until the timeout.
                    DnsCounters::bump(&self.counters.mismatched);
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

fn unspecified(peer: SocketAddr) -> SocketAddr {
    match peer {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    }
}
