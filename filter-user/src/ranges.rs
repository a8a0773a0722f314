//! The destination index (`filter_common::ranges`) built from an allow table, and written into
//! the kernel's arrays through a memory mapping.
//!
//! Building is a single pass over the table's prefixes in address order: the prefixes still open
//! at each point form a stack (outer below inner), and every place where the innermost open
//! prefix changes starts a range. Chunk starts are then cut in, so that each chunk's run begins
//! at the chunk's first address.

use std::{
    os::fd::{AsFd as _, AsRawFd as _},
    ptr::NonNull,
};

use aya::maps::MapData;
use filter_common::ranges::{index_entry, CHUNKS, CHUNK_BITS, RANGES_PER_COPY};

/// Range starts and values over an address space of `width` bits, sorted, adjacent values
/// distinct, the first starting at 0. `entries` are (first address, last address, value) of
/// every prefix, sorted by first address and, among equal ones, shorter prefix first; nested
/// or disjoint (prefixes never partly overlap).
#[must_use]
pub fn build(entries: impl IntoIterator<Item = (u128, u128, u32)>, width: u32) -> Vec<(u128, u32)> {
    let space_end = if width == 128 {
        u128::MAX
    } else {
        (1u128 << width) - 1
    };
    let mut out: Vec<(u128, u32)> = vec![(0, 0)];
    // (last address, value) of the prefixes open at the current point, outermost first.
    let mut open: Vec<(u128, u32)> = Vec::new();
    let close_until = |out: &mut Vec<(u128, u32)>, open: &mut Vec<(u128, u32)>, before: u128| {
        while let Some(&(last, _)) = open.last() {
            if last >= before {
                break;
            }
            open.pop();
            if last < space_end {
                let below = open.last().map_or(0, |&(_, value)| value);
                push(out, last + 1, below);
            }
        }
    };
    for (first, last, value) in entries {
        close_until(&mut out, &mut open, first);
        push(&mut out, first, value);
        open.push((last, value));
    }
    close_until(&mut out, &mut open, space_end);
    // What is left ends at the space's end.
    out
}

/// Appends a range start, merging it with the last one when they start together or agree.
fn push(out: &mut Vec<(u128, u32)>, start: u128, value: u32) {
    if let Some(last) = out.last_mut() {
        if last.0 == start {
            last.1 = value;
            if out.len() >= 2 && out[out.len() - 2].1 == value {
                out.pop();
            }
            return;
        }
        if last.1 == value {
            return;
        }
    }
    out.push((start, value));
}

/// One copy of an index and its ranges, ready to write: `index[chunk]` names ranges by their
/// position in the whole ranges array (copy `copy`'s half).
pub struct Chunked {
    pub index: Vec<u64>,
    pub ranges: Vec<(u128, u32)>,
}

/// Cuts `ranges` (from [`build`]) into chunks of the top [`CHUNK_BITS`] bits for copy `copy`.
/// `None` when they do not fit in one copy.
#[must_use]
pub fn chunk(ranges: &[(u128, u32)], width: u32, copy: u32) -> Option<Chunked> {
    let shift = width - CHUNK_BITS;
    let base = copy * RANGES_PER_COPY;
    let mut index = Vec::with_capacity(CHUNKS as usize);
    let mut flat: Vec<(u128, u32)> = Vec::with_capacity(ranges.len() + CHUNKS as usize);
    let mut next = 0;
    let mut value = 0;
    for chunk in 0..u128::from(CHUNKS) {
        let chunk_start = chunk << shift;
        // The last chunk of IPv6 ends at the end of the space, past u128.
        let chunk_end = chunk_start.checked_add(1u128 << shift);
        while next < ranges.len() && ranges[next].0 <= chunk_start {
            value = ranges[next].1;
            next += 1;
        }
        let first = flat.len();
        flat.push((chunk_start, value));
        while next < ranges.len() && chunk_end.is_none_or(|end| ranges[next].0 < end) {
            flat.push(ranges[next]);
            value = ranges[next].1;
            next += 1;
        }
        if flat.len() > RANGES_PER_COPY as usize {
            return None;
        }
        index.push(index_entry(
            base + first as u32,
            (flat.len() - first) as u32,
        ));
    }
    Some(Chunked {
        index,
        ranges: flat,
    })
}

/// The run of one chunk (its first range starting at the chunk's first address) from `entries`
/// (as for [`build`]: every prefix that overlaps the chunk, including the ones covering it).
#[must_use]
pub fn chunk_run(
    entries: impl IntoIterator<Item = (u128, u128, u32)>,
    width: u32,
    chunk: u128,
) -> Vec<(u128, u32)> {
    let shift = width - CHUNK_BITS;
    let chunk_start = chunk << shift;
    let chunk_end = chunk_start.checked_add(1u128 << shift);
    let ranges = build(entries, width);
    let at = ranges.partition_point(|&(start, _)| start <= chunk_start);
    let mut run = vec![(chunk_start, ranges[at - 1].1)];
    run.extend(
        ranges[at..]
            .iter()
            .take_while(|&&(start, _)| chunk_end.is_none_or(|end| start < end)),
    );
    run
}

/// The value (policy id + 1, or 0) `chunked` gives `addr`: the kernel's search, in userspace,
/// for tests.
#[must_use]
pub fn search(chunked: &Chunked, addr: u128, width: u32, copy: u32) -> u32 {
    let entry = chunked.index[(addr >> (width - CHUNK_BITS)) as usize];
    let first = (entry as u32 - copy * RANGES_PER_COPY) as usize;
    let count = (entry >> 32) as usize;
    let run = &chunked.ranges[first..first + count];
    let at = run.partition_point(|&(start, _)| start <= addr);
    run[at - 1].1
}

/// A BPF array that this process writes as memory (`BPF_F_MMAPABLE`). Each access maps only the
/// pages it touches and unmaps them after: the kernel maps an array's pages all at once, and a
/// standing mapping of the whole index would count its 130 MB in the daemon's resident memory.
pub struct MappedArray<T> {
    map: MapData,
    len: usize,
    _element: std::marker::PhantomData<T>,
}

/// Pages of a map, mapped into this process until dropped.
struct Window {
    ptr: NonNull<u8>,
    bytes: usize,
}

impl Window {
    /// Maps the pages holding bytes `start..end` of `map`; returns the window and where byte
    /// `start` lies in it.
    fn new(
        map: &MapData,
        start: usize,
        end: usize,
        writable: bool,
    ) -> std::io::Result<(Self, usize)> {
        let page = page_size();
        let first = start / page * page;
        let bytes = (end - first).next_multiple_of(page).max(page);
        let protection = if writable {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_READ
        };
        // Safety: a fresh shared mapping of the map's fd at a page-aligned offset; the kernel
        // checks the range against the map's size.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                protection,
                libc::MAP_SHARED,
                map.fd().as_fd().as_raw_fd(),
                libc::off_t::try_from(first).map_err(|_| std::io::Error::other("offset"))?,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let ptr = NonNull::new(ptr.cast()).ok_or_else(std::io::Error::last_os_error)?;
        Ok((Self { ptr, bytes }, start - first))
    }
}

impl Drop for Window {
    fn drop(&mut self) {
        // Safety: unmaps exactly what `Window::new` mapped.
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.bytes);
        }
    }
}

impl<T: Copy> MappedArray<T> {
    /// `map`, an mmapable array of `len` elements of `T`.
    pub fn new(map: MapData, len: usize) -> std::io::Result<Self> {
        // Map it once to find out now whether it can be.
        drop(Window::new(&map, 0, size_of::<T>(), false)?);
        Ok(Self {
            map,
            len,
            _element: std::marker::PhantomData,
        })
    }

    /// Its length in elements.
    #[must_use]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it holds no element.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Writes `values` from element `at` on. Panics when they do not fit.
    pub fn write(&mut self, at: usize, values: &[T]) -> std::io::Result<()> {
        assert!(at + values.len() <= self.len, "write past the mapped array");
        if values.is_empty() {
            return Ok(());
        }
        let size = size_of::<T>();
        let (window, offset) = Window::new(&self.map, at * size, (at + values.len()) * size, true)?;
        // Safety: in bounds of the window (checked above); nothing else in this process
        // references it.
        unsafe {
            std::ptr::copy_nonoverlapping(
                values.as_ptr(),
                window.ptr.as_ptr().add(offset).cast::<T>(),
                values.len(),
            );
        }
        Ok(())
    }
}

impl MappedArray<u64> {
    /// Stores `value` at element `at` with one aligned 64-bit store, so that a program reading
    /// it concurrently sees the old value or the new one; everything written before is visible
    /// first.
    pub fn store(&mut self, at: usize, value: u64) -> std::io::Result<()> {
        assert!(at < self.len, "store past the mapped array");
        let (window, offset) = Window::new(&self.map, at * 8, at * 8 + 8, true)?;
        #[expect(
            clippy::cast_ptr_alignment,
            reason = "the window starts on a page and the element at a multiple of 8 bytes"
        )]
        // Safety: the window holds this aligned element (elements are 8 bytes from a
        // page-aligned start); no other reference to it exists in this process.
        let atomic = unsafe {
            std::sync::atomic::AtomicU64::from_ptr(window.ptr.as_ptr().add(offset).cast::<u64>())
        };
        atomic.store(value, std::sync::atomic::Ordering::Release);
        Ok(())
    }
}

impl<T: Copy + Default> MappedArray<T> {
    /// Elements `at..at + count`.
    pub fn read(&self, at: usize, count: usize) -> std::io::Result<Vec<T>> {
        assert!(at + count <= self.len, "read past the mapped array");
        let size = size_of::<T>();
        let (window, offset) = Window::new(&self.map, at * size, (at + count) * size, false)?;
        let mut out = vec![T::default(); count];
        // Safety: the window holds the `count` elements from `offset` (checked against the
        // array's length above); `T` is plain data.
        unsafe {
            std::ptr::copy_nonoverlapping(
                window.ptr.as_ptr().add(offset).cast::<T>(),
                out.as_mut_ptr(),
                count,
            );
        }
        Ok(out)
    }
}

fn page_size() -> usize {
    // Safety: sysconf has no preconditions.
    usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096)
}

/// Waits until every BPF program that was running when called has returned: programs run under
/// RCU, and `membarrier(MEMBARRIER_CMD_GLOBAL)` is `synchronize_rcu()`. Where the kernel refuses
/// it (nohz_full), sleeps for far longer than any program run.
pub fn wait_for_running_programs() {
    const MEMBARRIER_CMD_GLOBAL: libc::c_int = 1;
    // Safety: membarrier takes no pointers.
    let done = unsafe { libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_GLOBAL, 0, 0) } == 0;
    if !done {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(a: [u8; 4]) -> u128 {
        u128::from(u32::from_be_bytes(a))
    }

    #[test]
    fn nested_prefixes_give_way_to_the_inner_and_resume_after_it() {
        // 10.0.0.0/8 → 1, 10.1.0.0/16 → 2, 10.1.2.0/24 → 1 (same as the outer), 11.0.0.0/8 → 3.
        let entries = [
            (v4([10, 0, 0, 0]), v4([10, 255, 255, 255]), 1),
            (v4([10, 1, 0, 0]), v4([10, 1, 255, 255]), 2),
            (v4([10, 1, 2, 0]), v4([10, 1, 2, 255]), 1),
            (v4([11, 0, 0, 0]), v4([11, 255, 255, 255]), 3),
        ];
        let ranges = build(entries, 32);
        assert_eq!(
            ranges,
            vec![
                (0, 0),
                (v4([10, 0, 0, 0]), 1),
                (v4([10, 1, 0, 0]), 2),
                (v4([10, 1, 2, 0]), 1),
                (v4([10, 1, 3, 0]), 2),
                (v4([10, 2, 0, 0]), 1),
                (v4([11, 0, 0, 0]), 3),
                (v4([12, 0, 0, 0]), 0),
            ]
        );
        let chunked = chunk(&ranges, 32, 1).expect("fits");
        for (addr, want) in [
            ([9, 255, 255, 255], 0),
            ([10, 0, 0, 1], 1),
            ([10, 1, 1, 1], 2),
            ([10, 1, 2, 200], 1),
            ([10, 1, 3, 0], 2),
            ([10, 200, 0, 0], 1),
            ([11, 9, 9, 9], 3),
            ([255, 255, 255, 255], 0),
        ] {
            assert_eq!(search(&chunked, v4(addr), 32, 1), want, "{addr:?}");
        }
    }

    #[test]
    fn a_chunk_run_matches_the_whole_build() {
        let entries = [
            (v4([10, 0, 0, 0]), v4([10, 255, 255, 255]), 1),
            (v4([10, 1, 0, 0]), v4([10, 1, 0, 255]), 2),
            (v4([10, 1, 200, 7]), v4([10, 1, 200, 7]), 3),
        ];
        let whole = chunk(&build(entries, 32), 32, 0).expect("fits");
        let chunk_index = v4([10, 1, 0, 0]) >> 16;
        let run = chunk_run(entries, 32, chunk_index);
        let entry = whole.index[chunk_index as usize];
        let first = entry as u32 as usize;
        assert_eq!(
            run,
            whole.ranges[first..first + (entry >> 32) as usize].to_vec()
        );
    }

    #[test]
    fn prefixes_reaching_the_end_of_the_space_close_cleanly() {
        let ranges = build([(0, u128::MAX, 5), (u128::MAX, u128::MAX, 6)], 128);
        assert_eq!(ranges, vec![(0, 5), (u128::MAX, 6)]);
        let chunked = chunk(&ranges, 128, 0).expect("fits");
        assert_eq!(search(&chunked, u128::MAX - 1, 128, 0), 5);
        assert_eq!(search(&chunked, u128::MAX, 128, 0), 6);
    }
}
