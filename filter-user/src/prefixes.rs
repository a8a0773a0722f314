//! Prefix arithmetic for imports: a list of prefixes minus another, exactly.
//!
//! Two prefixes are either nested or disjoint, so removing `r` from `p` is one of three cases:
//! `r` covers `p` (nothing is left), `r` misses `p` (all of `p` is left), or `r` lies inside
//! `p`, where what is left is the sibling half at each level on the way down from `p` to `r`.

use ipnet::IpNet;

/// Every address of `base` that is in no prefix of `remove`, as few prefixes as possible.
#[must_use]
pub fn subtract(base: &[IpNet], remove: &[IpNet]) -> Vec<IpNet> {
    let mut left: Vec<IpNet> = IpNet::aggregate(&base.to_vec());
    for cut in IpNet::aggregate(&remove.to_vec()) {
        left = left
            .into_iter()
            .flat_map(|prefix| without(prefix, cut))
            .collect();
    }
    IpNet::aggregate(&left)
}

/// `prefix` less `cut`.
fn without(prefix: IpNet, cut: IpNet) -> Vec<IpNet> {
    if cut.contains(&prefix) {
        return Vec::new();
    }
    if !prefix.contains(&cut) {
        return vec![prefix];
    }
    let mut left = Vec::new();
    let mut around = prefix;
    while around.prefix_len() < cut.prefix_len() {
        let mut inner = around;
        for half in around
            .subnets(around.prefix_len() + 1)
            .expect("a prefix shorter than another of its family can be halved")
        {
            if half.contains(&cut) {
                inner = half;
            } else {
                left.push(half);
            }
        }
        around = inner;
    }
    left
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use proptest::prelude::*;

    use super::*;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|n| n.parse().unwrap()).collect()
    }

    #[test]
    fn a_hole_leaves_the_sibling_halves() {
        assert_eq!(
            subtract(&nets(&["10.0.0.0/24"]), &nets(&["10.0.0.64/26"])),
            nets(&["10.0.0.0/26", "10.0.0.128/25"])
        );
        assert_eq!(
            subtract(
                &nets(&["10.0.0.0/24", "2001:db8::/32"]),
                &nets(&["10.0.0.0/8"])
            ),
            nets(&["2001:db8::/32"]),
            "a covering cut removes all; other families are untouched"
        );
        assert_eq!(
            subtract(&nets(&["10.0.0.0/24"]), &nets(&["192.0.2.0/24", "::/0"])),
            nets(&["10.0.0.0/24"])
        );
    }

    /// A prefix inside 10.0.0.0/24, so every address can be checked one by one.
    fn small_prefix() -> impl Strategy<Value = IpNet> {
        (any::<u8>(), 24u8..=32).prop_map(|(host, len)| {
            IpNet::new(Ipv4Addr::new(10, 0, 0, host).into(), len)
                .unwrap()
                .trunc()
        })
    }

    proptest! {
        #[test]
        fn subtraction_keeps_exactly_the_addresses_of_base_outside_remove(
            base in proptest::collection::vec(small_prefix(), 0..6),
            remove in proptest::collection::vec(small_prefix(), 0..6),
        ) {
            let left = subtract(&base, &remove);
            let covered = |list: &[IpNet], addr: Ipv4Addr| {
                list.iter().any(|net| net.contains(&std::net::IpAddr::V4(addr)))
            };
            for host in 0..=255u8 {
                let addr = Ipv4Addr::new(10, 0, 0, host);
                prop_assert_eq!(
                    covered(&left, addr),
                    covered(&base, addr) && !covered(&remove, addr),
                    "{} with base {:?} remove {:?} left {:?}", addr, base, remove, left
                );
            }
            for (i, a) in left.iter().enumerate() {
                for b in &left[i + 1..] {
                    prop_assert!(!a.contains(b) && !b.contains(a), "{} and {} overlap", a, b);
                }
            }
        }
    }
}
