//! The little the engine needs from a hook: where the frame is and where it came from.

use core::ffi::c_void;

use aya_ebpf::{
    programs::{TcContext, XdpContext},
    EbpfContext,
};
use filter_common::Hook;

/// A frame to judge, as seen by one hook.
pub(crate) trait PacketContext: EbpfContext {
    /// Which hook this is, for drop events.
    const HOOK: Hook;
    /// Whether this hook checks that sources belong on their interface: XDP sees what clients
    /// send into the gateway, TC ingress on a pod's veth what the pod sends; TC egress sees what
    /// the host itself sends, whose source it chose.
    const CHECKS_SOURCES: bool;
    /// Address of the first byte of the frame (Ethernet header).
    fn data(&self) -> usize;
    /// Address one past the last byte the program may read directly.
    fn data_end(&self) -> usize;
    /// The interface the program runs on.
    fn ifindex(&self) -> u32;
    /// The frame's full length in bytes, for byte counters.
    fn packet_len(&self) -> u32;
    /// The interface the packet came in on, which client groups may name: the hook's own for
    /// XDP and TC ingress, the one a forwarded packet arrived on for TC egress (0 for a packet
    /// the host itself sends).
    fn arrival_ifindex(&self) -> u32;
}

impl PacketContext for XdpContext {
    const HOOK: Hook = Hook::Xdp;
    const CHECKS_SOURCES: bool = true;

    #[inline(always)]
    fn data(&self) -> usize {
        XdpContext::data(self)
    }

    #[inline(always)]
    fn data_end(&self) -> usize {
        XdpContext::data_end(self)
    }

    #[inline(always)]
    fn ifindex(&self) -> u32 {
        // Safety: `ctx` is the xdp_md the kernel passed to the program.
        unsafe { (*self.ctx).ingress_ifindex }
    }

    #[inline(always)]
    fn packet_len(&self) -> u32 {
        (XdpContext::data_end(self) - XdpContext::data(self)) as u32
    }

    #[inline(always)]
    fn arrival_ifindex(&self) -> u32 {
        self.ifindex()
    }
}

impl PacketContext for TcContext {
    const HOOK: Hook = Hook::Tc;
    const CHECKS_SOURCES: bool = false;

    #[inline(always)]
    fn data(&self) -> usize {
        TcContext::data(self)
    }

    #[inline(always)]
    fn data_end(&self) -> usize {
        TcContext::data_end(self)
    }

    #[inline(always)]
    fn ifindex(&self) -> u32 {
        // Safety: `skb` is the __sk_buff the kernel passed to the program.
        unsafe { (*self.skb.skb).ifindex }
    }

    #[inline(always)]
    fn packet_len(&self) -> u32 {
        self.len()
    }

    #[inline(always)]
    fn arrival_ifindex(&self) -> u32 {
        // Safety: as for `ifindex`.
        unsafe { (*self.skb.skb).ingress_ifindex }
    }
}

/// A TC hook: what it needs of the skb beyond the frame (its length, pulling headers in).
pub(crate) trait SkbContext: PacketContext {
    fn skb(&self) -> &TcContext;
}

impl SkbContext for TcContext {
    #[inline(always)]
    fn skb(&self) -> &TcContext {
        self
    }
}

/// TC on the host side of a pod's veth, in the ingress direction: a TC hook whose packets come
/// from a client that chose their source, so it checks sources as XDP does.
#[repr(transparent)]
pub(crate) struct PodVeth(pub TcContext);

impl SkbContext for PodVeth {
    #[inline(always)]
    fn skb(&self) -> &TcContext {
        &self.0
    }
}

impl EbpfContext for PodVeth {
    #[inline(always)]
    fn as_ptr(&self) -> *mut c_void {
        self.0.as_ptr()
    }
}

impl PacketContext for PodVeth {
    const HOOK: Hook = Hook::Tc;
    const CHECKS_SOURCES: bool = true;

    #[inline(always)]
    fn data(&self) -> usize {
        self.0.data()
    }

    #[inline(always)]
    fn data_end(&self) -> usize {
        self.0.data_end()
    }

    #[inline(always)]
    fn ifindex(&self) -> u32 {
        PacketContext::ifindex(&self.0)
    }

    #[inline(always)]
    fn packet_len(&self) -> u32 {
        self.0.len()
    }

    #[inline(always)]
    fn arrival_ifindex(&self) -> u32 {
        // At ingress the packet arrives on the hook's own interface.
        PacketContext::ifindex(&self.0)
    }
}

/// XDP with multi-buffer frames (`egress_xdp_mb`): the frame may go on past its first
/// buffer, the part between data and data_end the parser reads.
#[repr(transparent)]
pub(crate) struct MultiBuffer(pub XdpContext);

impl EbpfContext for MultiBuffer {
    #[inline(always)]
    fn as_ptr(&self) -> *mut c_void {
        self.0.as_ptr()
    }
}

impl PacketContext for MultiBuffer {
    const HOOK: Hook = Hook::Xdp;
    const CHECKS_SOURCES: bool = true;

    #[inline(always)]
    fn data(&self) -> usize {
        self.0.data()
    }

    #[inline(always)]
    fn data_end(&self) -> usize {
        self.0.data_end()
    }

    #[inline(always)]
    fn ifindex(&self) -> u32 {
        PacketContext::ifindex(&self.0)
    }

    #[inline(always)]
    fn packet_len(&self) -> u32 {
        // Only the helper knows the whole length, the later buffers included: a helper call
        // each time the length is read, paid only on the links that need this variant.
        // Safety: `ctx` is the xdp_md the kernel passed to the program.
        unsafe { aya_ebpf::helpers::generated::bpf_xdp_get_buff_len(self.0.ctx) as u32 }
    }

    #[inline(always)]
    fn arrival_ifindex(&self) -> u32 {
        PacketContext::ifindex(&self.0)
    }
}
