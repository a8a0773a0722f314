//! `show --resolve` against a real DNS server (dnsmasq on loopback). Needs the setup's packages.

use std::path::Path;

use filter_tests::dns::{DnsServer, HostRecord};

#[test]
fn resolved_hosts_join_the_table_with_their_ttl_and_failures_are_named() -> anyhow::Result<()> {
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
    let report = runtime.block_on(filter_user::cmd::show::run(
        &[rules],
        true,
        Some(server.addr),
    ));
    std::fs::remove_dir_all(Path::new(&dir))?;
    let report = report?;

    let prefixes: Vec<String> = report
        .prefixes
        .iter()
        .map(|p| p.prefix.to_string())
        .collect();
    assert_eq!(
        prefixes,
        ["192.0.2.10/32", "2001:db8::10/128"],
        "both families are resolved and allowed"
    );
    let mdm = report
        .hosts
        .iter()
        .find(|h| h.host == "mdm.example.test")
        .expect("listed");
    let ttl = mdm.ttl_secs.expect("a TTL");
    assert!(
        (100..=120).contains(&ttl),
        "the server's TTL is honoured, got {ttl}"
    );
    let missing = report
        .hosts
        .iter()
        .find(|h| h.host == "missing.example.test")
        .expect("listed");
    assert!(
        missing.addresses.is_empty() && missing.error.is_some(),
        "an unresolvable name says why"
    );
    Ok(())
}
