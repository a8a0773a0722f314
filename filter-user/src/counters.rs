//! The kernel's per-CPU counters (`REASON_STATS`, `SERVICE_STATS`, `EVENT_STATS`), opened from a
//! pinned filter or a loaded object, and read summed over CPUs. The one place that knows how.

use std::os::fd::AsFd as _;

use anyhow::Context as _;
use aya::{
    maps::{Map, MapData, PerCpuArray},
    Ebpf,
};
use filter_common::{maps as names, EventCounter, PacketCount, Reason};

use crate::pins::PinDir;

/// Handles on the three counter maps.
pub struct Counters {
    reasons: PerCpuArray<MapData, PacketCount>,
    services: PerCpuArray<MapData, PacketCount>,
    events: PerCpuArray<MapData, u64>,
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
            events: per_cpu(open(names::EVENT_STATS)?)?,
        })
    }

    /// The counters of a loaded object (second handles: the object keeps its own).
    pub fn loaded(ebpf: &Ebpf) -> anyhow::Result<Self> {
        let open = |name: &'static str| -> anyhow::Result<MapData> {
            let map = ebpf
                .map(name)
                .with_context(|| format!("map {name} missing"))?;
            let Map::PerCpuArray(data) = map else {
                anyhow::bail!("map {name} is not a per-CPU array");
            };
            Ok(MapData::from_fd(data.fd().as_fd().try_clone_to_owned()?)?)
        };
        Ok(Self {
            reasons: per_cpu(open(names::REASON_STATS)?)?,
            services: per_cpu(open(names::SERVICE_STATS)?)?,
            events: per_cpu(open(names::EVENT_STATS)?)?,
        })
    }

    /// Packets and bytes counted under `reason`.
    pub fn reason(&self, reason: Reason) -> anyhow::Result<PacketCount> {
        Ok(sum(&self.reasons.get(&(reason as u32), 0)?))
    }

    /// Packets and bytes a service (by id) allowed.
    pub fn service(&self, id: u32) -> anyhow::Result<PacketCount> {
        Ok(sum(&self.services.get(&id, 0)?))
    }

    /// An event counter.
    pub fn event(&self, counter: EventCounter) -> anyhow::Result<u64> {
        Ok(self.events.get(&(counter as u32), 0)?.iter().sum())
    }
}

fn per_cpu<V: aya::Pod>(data: MapData) -> anyhow::Result<PerCpuArray<MapData, V>> {
    Ok(PerCpuArray::try_from(Map::from_map_data(data)?)?)
}

fn sum(values: &[PacketCount]) -> PacketCount {
    values
        .iter()
        .fold(PacketCount::default(), |a, c| PacketCount {
            packets: a.packets + c.packets,
            bytes: a.bytes + c.bytes,
        })
}
