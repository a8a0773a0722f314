//! What the map writer puts in the kernel: an update changes verdicts and writes only what
//! differs, and a prefix whose policy slot is gone fails closed.

use filter_common::Reason;
use filter_tests::harness::{Filter, Hook, Outcome};
use filter_user::table::{Grant, PortSpec};

use crate::common::{grants, v4, UNLISTED4};

#[test]
fn incremental_update_changes_verdicts_and_only_what_differs() -> anyhow::Result<()> {
    let mut filter = Filter::new(&grants())?;
    let mut next = grants();
    next.retain(|g| g.service != 3); // 203.0.113.0/24 goes
    next.push(Grant {
        prefix: "192.0.2.99/32".parse()?,
        service: 6,
        ports: vec![PortSpec::Tcp(443..=443)],
        groups: filter_common::groups::ALL_GROUPS,
    });
    let stats = filter
        .maps
        .apply(&filter_user::table::AllowTable::build(&next)?)?;
    assert_eq!(
        (stats.prefixes_written, stats.prefixes_deleted),
        (1, 1),
        "{stats:?}"
    );
    assert_eq!(
        filter.judge(Hook::Xdp, &v4(UNLISTED4).build())?,
        (Outcome::Pass, Reason::Allowed)
    );
    assert_eq!(
        filter.judge(Hook::Xdp, &v4("203.0.113.1").tcp(1500).build())?,
        (Outcome::Drop, Reason::NoService)
    );
    let again = filter
        .maps
        .apply(&filter_user::table::AllowTable::build(&next)?)?;
    assert_eq!(
        again,
        filter_user::maps::ApplyStats::default(),
        "re-applying the same table writes nothing"
    );
    Ok(())
}

#[test]
fn a_prefix_pointing_at_no_policy_fails_closed() -> anyhow::Result<()> {
    let mut filter = Filter::new(&grants())?;
    filter.point_prefix_at(
        "192.0.2.0/24".parse()?,
        filter_common::maps::MAX_POLICIES + 7,
    )?;
    for hook in Hook::BOTH {
        assert_eq!(
            filter.judge(hook, &v4(UNLISTED4).build())?,
            (Outcome::Drop, Reason::PolicyMissing),
            "{hook:?}"
        );
    }
    Ok(())
}
