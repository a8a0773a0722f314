//! Hostname resolution with TTLs, through hickory: the system's resolver (`/etc/resolv.conf`)
//! or one named on the command line.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::{Duration, Instant},
};

use hickory_resolver::{
    config::{
        ConnectionConfig, LookupIpStrategy, NameServerConfig, ProtocolConfig, ResolverConfig,
    },
    net::runtime::TokioRuntimeProvider,
    TokioResolver,
};

/// Lookups in flight at once: enough to resolve a few hundred names in a second or two without
/// flooding a small home-router resolver.
const CONCURRENCY: usize = 32;

/// Longest a whole batch may take. With a dead resolver, hundreds of names times the per-query
/// timeout would hold the daemon for minutes; what is not answered by then counts as failed and
/// is retried on the refresh schedule.
const BATCH_DEADLINE: Duration = Duration::from_secs(10);

/// What one name resolved to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    pub addresses: Vec<IpAddr>,
    /// How long the answer may be used (the smallest TTL among its records).
    pub ttl: Duration,
}

/// A resolver for the names in the rules.
#[derive(Clone)]
pub struct Resolver {
    inner: Arc<TokioResolver>,
}

/// Why a resolver could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("cannot set up the DNS resolver")]
pub struct ResolverError(#[source] hickory_resolver::net::NetError);

/// Why a name has no answer (as opposed to an answer with no addresses, which NXDOMAIN is).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LookupError {
    /// The resolver failed: unreachable, SERVFAIL, refused, …
    #[error("{0}")]
    Failed(String),
    #[error("no answer within {}s", .0.as_secs())]
    Deadline(Duration),
    #[error("lookup task failed")]
    TaskFailed,
}

/// A batch of lookups' outcomes, by name.
pub type Lookups = BTreeMap<String, Result<Answer, LookupError>>;

impl Resolver {
    /// The system's resolver, or the one at `server` if given.
    pub fn new(server: Option<SocketAddr>) -> Result<Self, ResolverError> {
        let mut builder = match server {
            None => TokioResolver::builder_tokio().map_err(ResolverError)?,
            Some(server) => {
                let connections = [ProtocolConfig::Udp, ProtocolConfig::Tcp]
                    .into_iter()
                    .map(|protocol| {
                        let mut c = ConnectionConfig::new(protocol);
                        c.port = server.port();
                        c
                    })
                    .collect();
                let config = ResolverConfig::from_name_servers(vec![NameServerConfig::new(
                    server.ip(),
                    true,
                    connections,
                )]);
                TokioResolver::builder_with_config(config, TokioRuntimeProvider::default())
            }
        };
        let options = builder.options_mut();
        // Both families: the filter must allow whichever one the device uses.
        options.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
        options.timeout = Duration::from_secs(3);
        options.attempts = 2;
        Ok(Self {
            inner: Arc::new(builder.build().map_err(ResolverError)?),
        })
    }

    /// Resolves one name.
    pub async fn resolve(&self, name: &str) -> Result<Answer, LookupError> {
        // A trailing dot keeps search domains out of it: rule hosts are fully qualified.
        let fqdn = format!("{}.", name.trim_end_matches('.'));
        let lookup = match self.inner.lookup_ip(fqdn.as_str()).await {
            Ok(lookup) => lookup,
            // "No such name" or "no address records" is an answer, not a failure: the name has
            // no addresses now, and is asked again after the minimum refresh.
            Err(err) if err.is_no_records_found() => {
                return Ok(Answer {
                    addresses: Vec::new(),
                    ttl: Duration::ZERO,
                });
            }
            Err(err) => return Err(LookupError::Failed(err.to_string())),
        };
        let mut addresses: Vec<IpAddr> = lookup.iter().collect();
        addresses.sort();
        addresses.dedup();
        let ttl = lookup
            .valid_until()
            .saturating_duration_since(Instant::now());
        Ok(Answer { addresses, ttl })
    }

    /// Resolves every name, `CONCURRENCY` at a time, within `BATCH_DEADLINE`. Each name gets
    /// its answer or its error.
    pub async fn resolve_all(&self, names: &[&str]) -> Lookups {
        let semaphore = Arc::new(tokio::sync::Semaphore::new(CONCURRENCY));
        let deadline = tokio::time::Instant::now() + BATCH_DEADLINE;
        let mut tasks = tokio::task::JoinSet::new();
        for name in names {
            let (resolver, semaphore, name) =
                (self.clone(), Arc::clone(&semaphore), (*name).to_owned());
            tasks.spawn(async move {
                let lookup = async {
                    let _permit = semaphore.acquire_owned().await;
                    resolver.resolve(&name).await
                };
                let answer = tokio::time::timeout_at(deadline, lookup)
                    .await
                    .unwrap_or(Err(LookupError::Deadline(BATCH_DEADLINE)));
                (name, answer)
            });
        }
        let mut out = BTreeMap::new();
        while let Some(joined) = tasks.join_next().await {
            if let Ok((name, answer)) = joined {
                out.insert(name, answer);
            }
        }
        // A lookup task that died (it cannot panic by design, but a join error is possible)
        // still leaves its name with an answer: an error, never a silent gap.
        for name in names {
            out.entry((*name).to_owned())
                .or_insert(Err(LookupError::TaskFailed));
        }
        out
    }
}
