//! `show --resolve` against a real DNS server (dnsmasq on loopback). Needs the setup's packages.

use filter_tests::dns::{DnsServer, HostRecord};

#[test]
fn resolved_hosts_join_the_table_with_their_ttl() -> anyhow::Result<()> {
    let server = DnsServer::start_local(
        &[HostRecord {
            name: "mdm.example.test",
            addresses: &["192.0.2.10", "2001:db8::10"],
        }],
        120,
    )?;
    let dir = std::env::temp_dir().join(format!("egress-filter-resolve-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let rules = dir.join("lab.toml");
    std::fs::write(
        &rules,
        "[[service]]\nname = \"mdm\"\nhosts = [\"mdm.example.test\", \"missing.example.test\"]\ntcp = [443]\n",
    )?;
    let runtime = tokio::runtime::Runtime::new()?;
    let answered = runtime.block_on(filter_user::cmd::show::run(
        std::slice::from_ref(&rules),
        true,
        Some(server.addr),
    ));
    let dead = server.addr;
    drop(server);
    let unanswered = runtime.block_on(filter_user::cmd::show::run(
        std::slice::from_ref(&rules),
        true,
        Some(dead),
    ));
    std::fs::remove_dir_all(&dir)?;
    let (answered, unanswered) = (answered?, unanswered?);

    let prefixes: Vec<String> = answered
        .prefixes
        .iter()
        .map(|p| p.prefix.to_string())
        .collect();
    assert_eq!(
        prefixes,
        ["192.0.2.10/32", "2001:db8::10/128"],
        "both families are resolved and allowed"
    );
    let host = |report: &filter_user::cmd::show::Report, name: &str| {
        report
            .hosts
            .iter()
            .find(|h| h.host == name)
            .map(|h| (h.addresses.len(), h.ttl_secs, h.error.clone()))
    };
    let (_, ttl, _) = host(&answered, "mdm.example.test").expect("listed");
    assert!(
        ttl.is_some_and(|t| (100..=120).contains(&t)),
        "the server's TTL is honoured, got {ttl:?}"
    );
    assert_eq!(
        host(&answered, "missing.example.test"),
        Some((0, Some(0), None)),
        "NXDOMAIN is an answer with no addresses"
    );
    let (count, _, error) = host(&unanswered, "mdm.example.test").expect("listed");
    assert!(
        count == 0 && error.is_some(),
        "a resolver that does not answer is an error, and says so: {error:?}"
    );
    Ok(())
}
