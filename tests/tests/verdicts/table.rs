//! The table of cases ([`crate::cases`]) through both hooks.

use filter_common::Reason;
use filter_tests::harness::{Filter, Hook};

use crate::{
    cases::cases,
    common::{grants, outcome_of},
};

/// Cases the kernel's skb test run refuses with EINVAL (it pulls a whole IPv4/IPv6 header for
/// frames of those ethertypes before running the program), so TC sees them only through XDP's
/// identical parser. The test checks the refusal too, so this list cannot hide anything else.
const SKB_TEST_RUN_REFUSES: [&str; 3] = [
    "cut inside the IPv4 header",
    "ethertype IPv4, nothing after",
    "cut inside the IPv6 header",
];

#[test]
fn every_case_gets_its_reason_and_verdict_on_both_hooks() -> anyhow::Result<()> {
    let mut filter = Filter::new(&grants())?;
    let mut failures = Vec::new();
    let cases = cases();
    for hook in Hook::BOTH {
        for (name, frame, expected) in &cases {
            if hook == Hook::Tc && SKB_TEST_RUN_REFUSES.contains(name) {
                if filter.run(hook, frame).is_ok() {
                    failures.push(format!(
                        "Tc {name}: expected the kernel to refuse the frame"
                    ));
                }
                continue;
            }
            let want = outcome_of(*expected);
            match filter.judge(hook, frame) {
                Ok((outcome, reason)) if outcome == want && reason == *expected => {}
                Ok(got) => failures.push(format!(
                    "{hook:?} {name}: expected {want:?}/{expected:?}, got {got:?}"
                )),
                Err(err) => failures.push(format!("{hook:?} {name}: {err:#}")),
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        2 * cases.len(),
        failures.join("\n")
    );
    // Every reason the datapath can reach from a frame has a case. PolicyMissing needs a damaged
    // map, SpoofedSource the source check, NotIpOnL3Device the layer-3 program and
    // EstablishedFlow a flow and an expired address: each has its own test: in `policy_maps`,
    // `sources`, `layer3` and `flows`.
    for reason in Reason::ALL {
        if ![
            Reason::PolicyMissing,
            Reason::SpoofedSource,
            Reason::NotIpOnL3Device,
            Reason::EstablishedFlow,
        ]
        .contains(&reason)
        {
            assert!(
                cases.iter().any(|(_, _, r)| *r == reason),
                "no case for {reason:?}"
            );
        }
    }
    Ok(())
}
