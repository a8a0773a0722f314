//! The kernel's per-CPU counters (`REASON_STATS` with its slot table, `SERVICE_STATS`,
//! `EVENT_STATS`, `FLOW_STATS`), opened from a pinned filter or a loaded object, and read summed over CPUs.
//! The one place that knows how.

use std::os::fd::AsFd as _;

use anyhow::Context as _;
use aya::{
    maps::{Array, Map, MapData, PerCpuArray, PerCpuValues},
    Ebpf,
};
use filter_common::{
    counters::{reason_counter, COUNTED_INTERFACES, COUNTER_SLOT_IFINDEX_LIMIT},
    flows::FlowCounter,
    maps as names, EventCounter, Hook, PacketCount, Reason,
};

use crate::pins::PinDir;

/// Handles on the counter maps.
pub struct Counters {
    reasons: PerCpuArray<MapData, PacketCount>,
    services: PerCpuArray<MapData, PacketCount>,
    group_drops: PerCpuArray<MapData, PacketCount>,
    events: PerCpuArray<MapData, u64>,
    flows: PerCpuArray<MapData, u64>,
}

impl std::fmt::Debug for Counters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Counters")
    }
}

impl Counters {
    /// The counters of the filter pinned at `pins`.
    pub fn pinned(pins: &PinDir) -> anyhow::Result<Self> {
        let open = |name: &str| {
            MapData::from_pin(pins.map_path(name)).with_context(|| {
                format!(
                    "no filter is pinned at {} (is egress-filter running with this --pin-path?)",
                    pins.root().display()
                )
            })
        };
        Ok(Self {
            reasons: per_cpu(open(names::REASON_STATS)?)?,
            services: per_cpu(open(names::SERVICE_STATS)?)?,
            group_drops: per_cpu(open(names::GROUP_DROPS)?)?,
            events: per_cpu(open(names::EVENT_STATS)?)?,
            flows: per_cpu(open(names::FLOW_STATS)?)?,
        })
    }

    /// The counters of a loaded object (second handles: the object keeps its own).
    pub fn loaded(ebpf: &Ebpf) -> anyhow::Result<Self> {
        let open = |name: &'static str| second_handle(ebpf, name);
        Ok(Self {
            reasons: per_cpu(open(names::REASON_STATS)?)?,
            services: per_cpu(open(names::SERVICE_STATS)?)?,
            group_drops: per_cpu(open(names::GROUP_DROPS)?)?,
            events: per_cpu(open(names::EVENT_STATS)?)?,
            flows: per_cpu(open(names::FLOW_STATS)?)?,
        })
    }

    /// Numbers the interfaces the filter runs on in the kernel's slot table: `wanted` holds
    /// (interface index, slot) pairs. A slot that changes hands (another interface, or a slot
    /// newly used) has its counters zeroed first, so an interface's counters only ever grow;
    /// an adopted filter's interfaces that keep their slot keep counting where they were.
    /// Interfaces no longer wanted count in slot 0 again.
    pub fn assign_slots(&mut self, ebpf: &Ebpf, wanted: &[(u32, u32)]) -> anyhow::Result<()> {
        let mut table: Array<MapData, u32> = Array::try_from(Map::from_map_data(second_handle(
            ebpf,
            names::COUNTER_SLOTS,
        )?)?)?;
        let mut held = std::collections::BTreeMap::new();
        for ifindex in 0..COUNTER_SLOT_IFINDEX_LIMIT {
            let slot = table.get(&ifindex, 0)?;
            if slot != 0 {
                held.insert(ifindex, slot);
            }
        }
        let cpus = aya::util::nr_cpus().map_err(|(what, err)| anyhow::anyhow!("{what}: {err}"))?;
        for &(ifindex, slot) in wanted {
            if ifindex >= COUNTER_SLOT_IFINDEX_LIMIT || held.remove(&ifindex) == Some(slot) {
                continue;
            }
            for hook in [Hook::Xdp, Hook::Tc] {
                for reason in Reason::ALL {
                    let zero = PerCpuValues::try_from(vec![PacketCount::default(); cpus])?;
                    self.reasons
                        .set(reason_counter(slot, hook, reason), zero, 0)?;
                }
            }
            table.set(ifindex, slot, 0)?;
        }
        for ifindex in held.into_keys() {
            table.set(ifindex, 0, 0)?;
        }
        Ok(())
    }

    /// Packets and bytes counted under `reason`, on every interface and hook.
    pub fn reason(&self, reason: Reason) -> anyhow::Result<PacketCount> {
        let mut total = PacketCount::default();
        for slot in 0..COUNTED_INTERFACES {
            for hook in [Hook::Xdp, Hook::Tc] {
                total = add(total, self.reason_at(slot, hook, reason)?);
            }
        }
        Ok(total)
    }

    /// Packets and bytes counted under `reason` on interface slot `slot` (see
    /// [`filter_common::counters`]) at `hook`.
    pub fn reason_at(&self, slot: u32, hook: Hook, reason: Reason) -> anyhow::Result<PacketCount> {
        Ok(sum(&self
            .reasons
            .get(&reason_counter(slot, hook, reason), 0)?))
    }

    /// Packets and bytes a service (by id) allowed.
    pub fn service(&self, id: u32) -> anyhow::Result<PacketCount> {
        Ok(sum(&self.services.get(&id, 0)?))
    }

    /// The packets dropped from the sources of client group `id`.
    pub fn group_drops(&self, id: u32) -> anyhow::Result<PacketCount> {
        Ok(sum(&self.group_drops.get(&id, 0)?))
    }

    /// An event counter.
    pub fn event(&self, counter: EventCounter) -> anyhow::Result<u64> {
        Ok(self.events.get(&(counter as u32), 0)?.iter().sum())
    }

    /// A flow counter.
    pub fn flow(&self, counter: FlowCounter) -> anyhow::Result<u64> {
        Ok(self.flows.get(&(counter as u32), 0)?.iter().sum())
    }

    /// Adds to a flow counter the daemon moves, on the first CPU's slot.
    pub fn add_flow(&mut self, counter: FlowCounter, count: u64) -> anyhow::Result<()> {
        let mut values: Vec<u64> = self.flows.get(&(counter as u32), 0)?.to_vec();
        if let Some(first) = values.first_mut() {
            *first += count;
        }
        self.flows
            .set(counter as u32, PerCpuValues::try_from(values)?, 0)?;
        Ok(())
    }
}

/// A second handle on one of `ebpf`'s maps: the object keeps its own.
fn second_handle(ebpf: &Ebpf, name: &'static str) -> anyhow::Result<MapData> {
    let map = ebpf
        .map(name)
        .with_context(|| format!("map {name} missing"))?;
    let (Map::PerCpuArray(data) | Map::Array(data)) = map else {
        anyhow::bail!("map {name} is not an array");
    };
    Ok(MapData::from_fd(data.fd().as_fd().try_clone_to_owned()?)?)
}

fn per_cpu<V: aya::Pod>(data: MapData) -> anyhow::Result<PerCpuArray<MapData, V>> {
    Ok(PerCpuArray::try_from(Map::from_map_data(data)?)?)
}

fn sum(values: &[PacketCount]) -> PacketCount {
    values.iter().copied().fold(PacketCount::default(), add)
}

fn add(a: PacketCount, b: PacketCount) -> PacketCount {
    PacketCount {
        packets: a.packets + b.packets,
        bytes: a.bytes + b.bytes,
    }
}
