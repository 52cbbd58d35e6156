//! The semantic cache's vector search: one namespace's stored prompt
//! embeddings, and the ones nearest a new prompt's.
//!
//! [`VectorIndex`] runs on a worker thread (no locks, no blocking, no
//! background thread), so every call is bounded: a named number of distance
//! evaluations, of slots scanned, of nodes copied. Big work is amortized
//! over many calls, never done in one.
//!
//! - **Storage.** Each vector is int8 codes and a scale
//!   ([`super::vectors`]), normalised on the way in (a unit vector is
//!   unchanged), in chunks of [`CHUNK_SLOTS`] slots with 64-byte-aligned
//!   rows: growth allocates one chunk and never copies the arena (a
//!   doubling `Vec` would move 25 MB at 100k entries, in one call). The map
//!   from the caller's ids to slots grows the same way: a larger table is
//!   filled a few entries per write while the old one still answers.
//! - **Brute force while small.** Up to `flat_entries_max` entries
//!   ([`FLAT_ENTRIES_MAX`] by default) every search scans all rows with the
//!   SIMD kernel: exact, and as fast as the graph at that size.
//! - **HNSW above it.** A hand-written hierarchical navigable small world
//!   graph (Malkov & Yashunin): [`M`] links per node per upper layer, [`M0`]
//!   on the bottom one, neighbours chosen by the diversity heuristic,
//!   levels drawn from a per-index xorshift (deterministic: the same
//!   inserts build the same graph). Links are u32 slots.
//! - **Removal is a tombstone.** A removed entry is never returned but still
//!   routes searches. When tombstones pass [`TOMBSTONES_PERCENT_MAX`] of the
//!   slots, a new tier is built **incrementally**: every write copies
//!   [`REBUILD_NODES_PER_WRITE`] live entries into it (more when it is a
//!   flat tier: a copy is a memcpy), searches keep using the old tier, and
//!   when the copy has caught up it replaces the old one, whose chunks are
//!   freed a few per call. The same mechanism turns a flat tier into a graph
//!   when it outgrows brute force, and a graph back into a flat tier when
//!   it shrinks below half of that. Memory doubles while a rebuild runs.
//!
//! Similarities are the quantized cosine (within about 0.01 of the exact
//! one): a caller's threshold is compared with that.

use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, HashMap};

use super::vectors;

/// Most dimensions a vector may have (the cache's static table has 256).
pub const DIMS_MAX: usize = 4096;
/// Most slots one tier holds, live and tombstoned (slots are u32, and
/// u32::MAX means none).
pub const SLOTS_MAX: usize = 1 << 26;
/// Entries up to which a search is a brute-force scan (the default of
/// [`Options::flat_entries_max`]). Measured by `cargo bench --bench ann`
/// (256 dimensions, clustered data): at 2k entries the scan and the graph
/// both take about 12 µs, at 4k the graph is twice as fast; and the scan is
/// exact.
pub const FLAT_ENTRIES_MAX: usize = 2048;
/// Links per node on each upper layer, and links a new node makes.
pub const M: usize = 16;
/// Links per node on the bottom layer.
pub const M0: usize = 2 * M;
/// Candidates kept while finding a new node's neighbours.
pub const EF_CONSTRUCTION: usize = 96;
/// Candidates kept while searching, unless set otherwise.
pub const EF_SEARCH_DEFAULT: usize = 32;
/// Most candidates a search or an insert keeps; also the most results
/// (`k`) a search returns.
pub const EF_MAX: usize = 256;
/// Layers of the graph (levels 0 to 7). A level is 4 leading zero bits of a
/// random word per step: P(level ≥ L) = 16^-L, so level 7 is one node in
/// 268 million; the cap only guards the array.
pub const LEVELS_MAX: usize = 8;
/// Tombstones, as a percentage of a tier's slots, above which it is
/// rebuilt. A third: a rebuild copies the live entries, about two per
/// tombstone that made it necessary, while a search walks through at most
/// half as many dead nodes again as live ones. (At a quarter, steady churn
/// spent half its writes rebuilding; `ANN_CHURN` in `benches/ann.rs`.)
pub const TOMBSTONES_PERCENT_MAX: usize = 33;
/// Fewer tombstones than this never start a rebuild: a small tier scans or
/// routes through them for less than a rebuild costs.
pub const TOMBSTONES_REBUILD_MIN: usize = 64;
/// Entries a write copies into a graph being rebuilt. More than 1, so the
/// copy gains on the old tier even when every write is an insert: a build
/// started at n slots is done within n/2 writes.
pub const REBUILD_NODES_PER_WRITE: usize = 3;
/// Entries a write copies into a flat tier being rebuilt (a copy is 300
/// bytes and a map insert).
pub const REBUILD_FLAT_NODES_PER_WRITE: usize = 64;
/// Entries a search copies into a tier being rebuilt. None: a graph insert
/// costs several searches, and the lookup is the latency the cache is
/// judged by; writes (which are what make a rebuild necessary) and
/// [`VectorIndex::maintain`] drive it.
pub const REBUILD_NODES_PER_SEARCH: usize = 0;
/// Most nodes one [`VectorIndex::maintain`] call copies.
pub const MAINTAIN_NODES_MAX: usize = 8;
/// Most slots of the old tier a call looks at while copying (tombstones
/// are skipped without cost but not without bound).
pub const REBUILD_SCAN_SLOTS_MAX: usize = 256;
/// Retired chunks freed per call (each is a few hundred KB: freeing a
/// whole tier at once could take a millisecond).
pub const RETIRE_CHUNKS_PER_CALL: usize = 2;
/// Slots whose id moves from a grown map's old table to its new one per
/// write.
pub const MAP_MIGRATE_SLOTS_PER_WRITE: usize = 16;
/// Tables smaller than this grow the ordinary way (all at once): copying a
/// few thousand entries is cheaper than tracking two tables.
pub const MAP_INCREMENTAL_CAPACITY_MIN: usize = 4096;
/// Most distance evaluations a graph search makes (the greedy descent and
/// the bottom layer together). A typical one at 100k entries makes about
/// 400; the bound stops a pathological one (a graph mostly tombstones).
pub const SEARCH_DISTANCES_MAX: usize = 4_096;
/// Most distance evaluations one graph insert makes (typically 1,500 at
/// 100k entries, a few times that for the rare node on three or more
/// layers). When its budget runs low an insert keeps neighbours by
/// similarity alone, without the heuristic's pairwise checks, and skips
/// pruning a full neighbour.
pub const INSERT_DISTANCES_MAX: usize = 12_288;
/// Most distance evaluations any write ([`VectorIndex::insert`],
/// [`VectorIndex::remove`]) makes: its own insert and its rebuild share.
pub const WRITE_DISTANCES_MAX: usize = INSERT_DISTANCES_MAX * (1 + REBUILD_NODES_PER_WRITE);
/// Slots per chunk of a tier's arena.
pub const CHUNK_SLOTS: usize = 1 << CHUNK_SHIFT;
const CHUNK_SHIFT: u32 = 10;

const _: () = {
    assert!(M0 <= u8::MAX as usize && M <= M0);
    assert!(LEVELS_MAX <= u8::MAX as usize);
    assert!(EF_SEARCH_DEFAULT <= EF_MAX && EF_CONSTRUCTION <= EF_MAX);
    assert!(REBUILD_NODES_PER_WRITE > 1 && REBUILD_FLAT_NODES_PER_WRITE > 1);
    assert!(REBUILD_SCAN_SLOTS_MAX >= REBUILD_FLAT_NODES_PER_WRITE);
    assert!(SLOTS_MAX < u32::MAX as usize);
    assert!(MAP_MIGRATE_SLOTS_PER_WRITE > 1);
};

const NONE: u32 = u32::MAX;
const LINE_BYTES: usize = 64;

/// One cache line of codes: rows are whole lines, so a 256-dimension row
/// is exactly four lines (an unaligned one would touch five).
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([i8; LINE_BYTES]);

const ZERO_LINE: Line = Line([0; LINE_BYTES]);

fn codes(lines: &[Line]) -> &[i8] {
    // SAFETY: `Line` is `repr(C)` over `[i8; 64]`: 64 bytes, no padding,
    // every bit pattern valid; the slice borrows `lines`.
    unsafe { std::slice::from_raw_parts(lines.as_ptr().cast::<i8>(), lines.len() * LINE_BYTES) }
}

fn codes_mut(lines: &mut [Line]) -> &mut [i8] {
    // SAFETY: as in `codes`, and the borrow is unique.
    unsafe {
        std::slice::from_raw_parts_mut(lines.as_mut_ptr().cast::<i8>(), lines.len() * LINE_BYTES)
    }
}

/// Why a vector was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum VectorError {
    #[error("the vector has {got} dimensions; the index has {want}")]
    Dims { got: usize, want: usize },
    #[error("the vector has a component that is not finite")]
    NotFinite,
    #[error("the index holds its most slots ({SLOTS_MAX})")]
    Full,
}

/// How an index is built; [`Options::default`] is what the cache uses.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Entries up to which searches are brute force.
    pub flat_entries_max: usize,
    /// Candidates a graph search keeps (clamped to 1..=[`EF_MAX`]): more is
    /// better recall and slower.
    pub ef_search: usize,
    /// The seed of the levels' random numbers.
    pub seed: u64,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            flat_entries_max: FLAT_ENTRIES_MAX,
            ef_search: EF_SEARCH_DEFAULT,
            seed: 0x5eed_0fa1_1c0d_e5ed,
        }
    }
}

/// A candidate: a slot and its similarity to the query. Ordered by
/// similarity (then slot, so the order is total and deterministic).
#[derive(Debug, Clone, Copy)]
struct Cand {
    sim: f32,
    slot: u32,
}

impl PartialEq for Cand {
    fn eq(&self, o: &Cand) -> bool {
        self.cmp(o) == Ordering::Equal
    }
}
impl Eq for Cand {}
impl PartialOrd for Cand {
    fn partial_cmp(&self, o: &Cand) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Cand {
    fn cmp(&self, o: &Cand) -> Ordering {
        self.sim
            .total_cmp(&o.sim)
            .then_with(|| o.slot.cmp(&self.slot))
    }
}

/// Distance evaluations one call may still make, and how many it made.
struct Budget {
    left: usize,
    used: usize,
}

impl Budget {
    fn new(n: usize) -> Budget {
        Budget { left: n, used: 0 }
    }

    /// Pays for `n` evaluations the caller has checked it can afford.
    fn spend(&mut self, n: usize) {
        let n = n.min(self.left);
        self.left -= n;
        self.used += n;
    }

    fn take(&mut self) -> bool {
        if self.left == 0 {
            return false;
        }
        self.left -= 1;
        self.used += 1;
        true
    }
}

/// xorshift64*: the levels' random numbers, deterministic per seed.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A node's top layer: geometric with p = 1/16 (m_L = 1/ln 16).
    fn level(&mut self) -> u8 {
        ((self.next().leading_zeros() / 4) as usize).min(LEVELS_MAX - 1) as u8
    }
}

/// [`CHUNK_SLOTS`] slots' worth of every per-slot array. Allocated whole,
/// never moved: a tier grows a chunk at a time.
struct Chunk {
    codes: Box<[Line]>,
    scales: Box<[f32]>,
    ids: Box<[u64]>,
    dead: Box<[bool]>,
    // Graph tiers only (empty in a flat one):
    levels: Box<[u8]>,
    counts0: Box<[u8]>,
    links0: Box<[u32]>,
    /// Where the slot's upper-layer lists start in [`Tier::upper`], or
    /// NONE (level 0).
    upper: Box<[u32]>,
}

impl Chunk {
    fn new(lines: usize, graph: bool) -> Chunk {
        let g = |n: usize| if graph { n } else { 0 };
        Chunk {
            codes: vec![ZERO_LINE; CHUNK_SLOTS * lines].into(),
            scales: vec![0.0; CHUNK_SLOTS].into(),
            ids: vec![0; CHUNK_SLOTS].into(),
            dead: vec![false; CHUNK_SLOTS].into(),
            levels: vec![0; g(CHUNK_SLOTS)].into(),
            counts0: vec![0; g(CHUNK_SLOTS)].into(),
            links0: vec![0; g(CHUNK_SLOTS * M0)].into(),
            upper: vec![NONE; g(CHUNK_SLOTS)].into(),
        }
    }

    fn bytes(&self) -> usize {
        self.codes.len() * LINE_BYTES
            + self.scales.len() * 4
            + self.ids.len() * 8
            + self.dead.len()
            + self.levels.len()
            + self.counts0.len()
            + self.links0.len() * 4
            + self.upper.len() * 4
    }
}

/// Caller ids to slots. When the table is full it is not rehashed in one
/// call: a table twice the size takes new entries, and each write moves the
/// ids of [`MAP_MIGRATE_SLOTS_PER_WRITE`] slots over from the old one,
/// which answers lookups until it is empty.
struct IdMap {
    now: HashMap<u64, u32, foldhash::fast::RandomState>,
    old: HashMap<u64, u32, foldhash::fast::RandomState>,
    /// The next slot whose id moves from `old` to `now`.
    cursor: u32,
}

impl IdMap {
    fn with_capacity(n: usize) -> IdMap {
        IdMap {
            now: HashMap::with_capacity_and_hasher(n, Default::default()),
            old: HashMap::default(),
            cursor: 0,
        }
    }

    fn get(&self, id: u64) -> Option<u32> {
        self.now.get(&id).or_else(|| self.old.get(&id)).copied()
    }

    fn remove(&mut self, id: u64) -> Option<u32> {
        self.now.remove(&id).or_else(|| self.old.remove(&id))
    }

    /// `id` must not be present (writes remove it first).
    fn insert(&mut self, id: u64, slot: u32) {
        let cap = self.now.capacity();
        if self.old.is_empty() && self.now.len() == cap && cap >= MAP_INCREMENTAL_CAPACITY_MIN {
            let bigger = HashMap::with_capacity_and_hasher(2 * cap, Default::default());
            self.old = std::mem::replace(&mut self.now, bigger);
            self.cursor = 0;
        }
        self.now.insert(id, slot);
    }

    fn bytes(&self) -> usize {
        // hashbrown: a power of two of buckets at 7/8 load, each an entry
        // and a control byte.
        let table = |cap: usize| {
            if cap == 0 {
                0
            } else {
                (cap * 8 / 7).next_power_of_two() * (std::mem::size_of::<(u64, u32)>() + 1)
            }
        };
        table(self.now.capacity()) + table(self.old.capacity())
    }
}

/// One generation of the index: a flat (brute-force) or graph arena.
struct Tier {
    graph: bool,
    /// Lines per row.
    lines: usize,
    chunks: Vec<Chunk>,
    /// Slots used, live and tombstoned.
    len: u32,
    dead: u32,
    map: IdMap,
    /// The graph's entry point (NONE while empty) and its level.
    entry: u32,
    top: u8,
    /// Upper-layer link lists: a node of level L has L lists of 1 + M u32
    /// (a count, then the links), for levels 1..=L. One node in 16 has any.
    upper: Vec<u32>,
}

#[inline]
fn at(s: u32) -> (usize, usize) {
    ((s >> CHUNK_SHIFT) as usize, s as usize & (CHUNK_SLOTS - 1))
}

impl Tier {
    fn new(graph: bool, lines: usize, capacity: usize) -> Tier {
        Tier {
            graph,
            lines,
            chunks: Vec::new(),
            len: 0,
            dead: 0,
            map: IdMap::with_capacity(capacity),
            entry: NONE,
            top: 0,
            upper: Vec::new(),
        }
    }

    fn live(&self) -> usize {
        (self.len - self.dead) as usize
    }

    fn row_lines(&self, s: u32) -> &[Line] {
        let (c, i) = at(s);
        &self.chunks[c].codes[i * self.lines..(i + 1) * self.lines]
    }

    fn row(&self, s: u32) -> &[i8] {
        codes(self.row_lines(s))
    }

    fn scale(&self, s: u32) -> f32 {
        let (c, i) = at(s);
        self.chunks[c].scales[i]
    }

    fn id(&self, s: u32) -> u64 {
        let (c, i) = at(s);
        self.chunks[c].ids[i]
    }

    fn is_dead(&self, s: u32) -> bool {
        let (c, i) = at(s);
        self.chunks[c].dead[i]
    }

    /// The quantized cosine of two stored rows.
    fn sim(&self, a: u32, b: u32) -> f32 {
        vectors::dot_i8(self.row(a), self.row(b)) as f32 * self.scale(a) * self.scale(b)
    }

    /// The quantized cosine of `q` (with its scale) and a stored row.
    fn qsim(&self, q: &[i8], q_scale: f32, s: u32) -> f32 {
        vectors::dot_i8(q, self.row(s)) as f32 * q_scale * self.scale(s)
    }

    /// Appends an entry; the caller links it into the graph.
    fn push(&mut self, id: u64, row: &[Line], scale: f32, level: u8) -> Result<u32, VectorError> {
        if self.len as usize >= SLOTS_MAX {
            return Err(VectorError::Full);
        }
        let s = self.len;
        let (c, i) = at(s);
        if c == self.chunks.len() {
            self.chunks.push(Chunk::new(self.lines, self.graph));
        }
        let upper_at = if self.graph && level > 0 {
            let at = self.upper.len() as u32;
            self.upper
                .resize(self.upper.len() + usize::from(level) * (1 + M), 0);
            at
        } else {
            NONE
        };
        let lines = self.lines;
        let ch = &mut self.chunks[c];
        ch.codes[i * lines..(i + 1) * lines].copy_from_slice(row);
        ch.scales[i] = scale;
        ch.ids[i] = id;
        ch.dead[i] = false;
        if self.graph {
            ch.levels[i] = level;
            ch.counts0[i] = 0;
            ch.upper[i] = upper_at;
        }
        self.len += 1;
        self.map.insert(id, s);
        Ok(s)
    }

    /// Tombstones `id`'s slot; whether it was there.
    fn kill(&mut self, id: u64) -> bool {
        let Some(s) = self.map.remove(id) else {
            return false;
        };
        let (c, i) = at(s);
        let dead = &mut self.chunks[c].dead[i];
        if !*dead {
            *dead = true;
            self.dead += 1;
        }
        true
    }

    /// Moves the ids of up to `slots` slots from the map's old table.
    fn migrate(&mut self, slots: usize) {
        if self.map.old.is_empty() {
            return;
        }
        for _ in 0..slots {
            if self.map.cursor >= self.len {
                break;
            }
            let id = self.id(self.map.cursor);
            self.map.cursor += 1;
            if let Some(s) = self.map.old.remove(&id) {
                self.map.now.insert(id, s);
            }
        }
        if self.map.cursor >= self.len && !self.map.old.is_empty() {
            // Unreachable (every id in the old table is some slot's below
            // `len`), but a map that never empties would leak lookups.
            let old = std::mem::take(&mut self.map.old);
            self.map.now.extend(old);
        }
    }

    /// Asks the CPU for `s`'s scale before it is read.
    #[inline]
    fn prefetch_scale(&self, s: u32) {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
            let (c, i) = at(s);
            // SAFETY: SSE is part of x86_64; a prefetch is a hint that
            // never faults (and the address is a live slice's).
            unsafe {
                _mm_prefetch::<_MM_HINT_T0>((&self.chunks[c].scales[i] as *const f32).cast())
            };
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = s;
    }

    /// Asks the CPU for `s`'s bottom-layer links before they are read.
    #[inline]
    fn prefetch_links(&self, s: u32, level: u8) {
        #[cfg(target_arch = "x86_64")]
        if level == 0 {
            use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
            let (c, i) = at(s);
            let links = &self.chunks[c].links0[i * M0..(i + 1) * M0];
            for line in links.chunks(LINE_BYTES / 4) {
                // SAFETY: SSE is part of x86_64; a prefetch is a hint that
                // never faults (and the address is a live slice's).
                unsafe { _mm_prefetch::<_MM_HINT_T0>(line.as_ptr().cast()) };
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (s, level);
    }

    /// `s`'s links on `level`.
    fn links(&self, s: u32, level: u8) -> &[u32] {
        let (c, i) = at(s);
        let ch = &self.chunks[c];
        if level == 0 {
            let n = usize::from(ch.counts0[i]).min(M0);
            return &ch.links0[i * M0..i * M0 + n];
        }
        let start = ch.upper[i];
        if start == NONE || level > ch.levels[i] {
            return &[];
        }
        let base = start as usize + usize::from(level - 1) * (1 + M);
        let n = (self.upper[base] as usize).min(M);
        &self.upper[base + 1..base + 1 + n]
    }

    fn set_links(&mut self, s: u32, level: u8, links: &[u32]) {
        let (c, i) = at(s);
        let ch = &mut self.chunks[c];
        if level == 0 {
            let n = links.len().min(M0);
            ch.links0[i * M0..i * M0 + n].copy_from_slice(&links[..n]);
            ch.counts0[i] = n as u8;
            return;
        }
        let start = ch.upper[i];
        if start == NONE || level > ch.levels[i] {
            return;
        }
        let base = start as usize + usize::from(level - 1) * (1 + M);
        let n = links.len().min(M);
        self.upper[base] = n as u32;
        self.upper[base + 1..base + 1 + n].copy_from_slice(&links[..n]);
    }

    fn bytes(&self) -> usize {
        self.chunks.capacity() * std::mem::size_of::<Chunk>()
            + self.chunks.iter().map(Chunk::bytes).sum::<usize>()
            + self.map.bytes()
            + self.upper.capacity() * 4
    }
}

/// Buffers a search or insert reuses (no allocation per call once warm).
struct Scratch {
    /// The vector being searched for or inserted, quantized.
    query: Box<[Line]>,
    q_scale: f32,
    cands: BinaryHeap<Cand>,
    results: BinaryHeap<Reverse<Cand>>,
    found: Vec<Cand>,
    entries: Vec<Cand>,
    selected: Vec<Cand>,
    pruned: Vec<Cand>,
    kept: Vec<Cand>,
    dots: Box<[i32]>,
    /// Per slot, the search epoch in which it was last visited: a new
    /// search starts a new epoch instead of clearing a set (all are
    /// cleared once every 65,535 searches, when the epoch wraps). Shared by
    /// the tiers; grown to the larger one's slots.
    visited: Vec<u16>,
    epoch: u16,
}

impl Scratch {
    fn new(lines: usize) -> Scratch {
        Scratch {
            query: vec![ZERO_LINE; lines].into(),
            q_scale: 0.0,
            cands: BinaryHeap::new(),
            results: BinaryHeap::new(),
            found: Vec::new(),
            entries: Vec::new(),
            selected: Vec::new(),
            pruned: Vec::new(),
            kept: Vec::new(),
            dots: vec![0; CHUNK_SLOTS].into(),
            visited: Vec::new(),
            epoch: 0,
        }
    }

    /// Starts a search's visited set over `slots` slots.
    fn next_epoch(&mut self, slots: u32) {
        if self.visited.len() < slots as usize {
            self.visited.resize(slots as usize, 0);
        }
        self.epoch = self.epoch.wrapping_add(1);
        if self.epoch == 0 {
            self.visited.fill(0);
            self.epoch = 1;
        }
    }

    fn bytes(&self) -> usize {
        let c = std::mem::size_of::<Cand>();
        self.query.len() * LINE_BYTES
            + (self.cands.capacity()
                + self.results.capacity()
                + self.found.capacity()
                + self.entries.capacity()
                + self.selected.capacity()
                + self.pruned.capacity()
                + self.kept.capacity())
                * c
            + self.dots.len() * 4
            + self.visited.capacity() * 2
    }
}

/// Quantizes `v` into `out`, returning the scale of its unit vector (0 for
/// a zero vector).
fn quantize(v: &[f32], out: &mut [Line]) -> f32 {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    let scale = vectors::quantize_into(v, codes_mut(out));
    if norm > 0.0 && norm.is_finite() {
        scale / norm
    } else {
        0.0
    }
}

/// From `ep`, the most similar node to the query found by greedy steps on
/// each level above `floor` (HNSW's descent, one candidate).
fn greedy(t: &Tier, sc: &Scratch, mut cur: Cand, floor: u8, b: &mut Budget) -> Cand {
    let q = codes(&sc.query);
    let mut rows: [&[i8]; M] = [&[]; M];
    let mut dots = [0i32; M];
    for level in (floor + 1..=t.top).rev() {
        // Each step moves to a strictly more similar node, so this ends;
        // the budget bounds how long.
        loop {
            let links = t.links(cur.slot, level);
            let n = links.len().min(M).min(b.left);
            for (r, &s) in rows.iter_mut().zip(&links[..n]) {
                *r = t.row(s);
            }
            vectors::dot_gather(q, &rows[..n], &mut dots[..n]);
            b.spend(n);
            let mut moved = false;
            for (&s, &d) in links[..n].iter().zip(&dots[..n]) {
                let sim = d as f32 * sc.q_scale * t.scale(s);
                if sim > cur.sim {
                    cur = Cand { sim, slot: s };
                    moved = true;
                }
            }
            if !moved || b.left == 0 {
                break;
            }
        }
    }
    cur
}

/// HNSW's search of one layer from `sc.entries`: the `ef` most similar live
/// nodes reachable, best first, into `sc.found`. Tombstones are walked
/// through but never kept.
fn search_layer(t: &Tier, sc: &mut Scratch, level: u8, ef: usize, b: &mut Budget) {
    sc.next_epoch(t.len);
    let epoch = sc.epoch;
    sc.cands.clear();
    sc.results.clear();
    for &ep in &sc.entries {
        let v = &mut sc.visited[ep.slot as usize];
        if *v != epoch {
            *v = epoch;
            sc.cands.push(ep);
            if !t.is_dead(ep.slot) {
                sc.results.push(Reverse(ep));
            }
        }
    }
    while sc.results.len() > ef {
        sc.results.pop();
    }
    let q = codes(&sc.query);
    let mut fresh = [0u32; M0];
    let mut rows: [&[i8]; M0] = [&[]; M0];
    let mut dots = [0i32; M0];
    // Each node is expanded at most once (the visited set), and every
    // comparison is paid from the budget.
    while let Some(c) = sc.cands.pop() {
        let worst = sc.results.peek().map_or(f32::NEG_INFINITY, |r| r.0.sim);
        if sc.results.len() >= ef && c.sim < worst {
            break;
        }
        // Branch-free: whether a neighbour was visited is a coin toss the
        // predictor would lose.
        let mut n = 0;
        for &s in t.links(c.slot, level) {
            let v = &mut sc.visited[s as usize];
            fresh[n] = s;
            n += usize::from(*v != epoch);
            *v = epoch;
        }
        let n = n.min(b.left);
        for (r, &s) in rows.iter_mut().zip(&fresh[..n]) {
            *r = t.row(s);
            t.prefetch_scale(s);
        }
        // The neighbours' rows are scattered: one call fetches them ahead
        // of the multiplications.
        vectors::dot_gather(q, &rows[..n], &mut dots[..n]);
        b.spend(n);
        for (&s, &d) in fresh[..n].iter().zip(&dots[..n]) {
            let sim = d as f32 * sc.q_scale * t.scale(s);
            let worst = sc.results.peek().map_or(f32::NEG_INFINITY, |r| r.0.sim);
            if sc.results.len() < ef || sim > worst {
                let cand = Cand { sim, slot: s };
                sc.cands.push(cand);
                if !t.is_dead(s) {
                    sc.results.push(Reverse(cand));
                    if sc.results.len() > ef {
                        sc.results.pop();
                    }
                }
            }
        }
        if b.left == 0 {
            break;
        }
        // The next node expanded is most likely the best candidate now:
        // its links are fetched while the heap work above retires.
        if let Some(next) = sc.cands.peek() {
            t.prefetch_links(next.slot, level);
        }
    }
    sc.found.clear();
    sc.found.extend(sc.results.drain().map(|r| r.0));
    sc.found.sort_unstable_by(|a, b| b.cmp(a));
}

/// HNSW's neighbour heuristic: from `cands` (best first, similarity to the
/// base node), up to `m`, skipping one that is more similar to an already
/// chosen neighbour than to the base (that direction is covered). Keeps
/// links pointing in different directions, which clustered data needs to
/// stay navigable. Short of budget, it keeps by similarity alone.
fn select(t: &Tier, cands: &[Cand], m: usize, b: &mut Budget, out: &mut Vec<Cand>) {
    out.clear();
    for &c in cands {
        if out.len() >= m {
            break;
        }
        let mut keep = true;
        if b.left >= out.len() {
            for s in out.iter() {
                b.take();
                if t.sim(c.slot, s.slot) > c.sim {
                    keep = false;
                    break;
                }
            }
        }
        if keep {
            out.push(c);
        }
    }
}

/// Links `n` back to the new node `new` (`new.sim`: their similarity) on
/// `level`, pruning `n`'s list with the heuristic when it is full.
fn link_back(t: &mut Tier, sc: &mut Scratch, n: u32, new: Cand, level: u8, b: &mut Budget) {
    let m = if level == 0 { M0 } else { M };
    let mut buf = [0u32; M0];
    let links = t.links(n, level);
    let count = links.len();
    buf[..count].copy_from_slice(links);
    if count < m {
        buf[count] = new.slot;
        t.set_links(n, level, &buf[..count + 1]);
        return;
    }
    // A prune needs the similarity of n to each current link, then the
    // heuristic's pairs; without budget for the first, n is left alone.
    if b.left < count + m {
        return;
    }
    sc.pruned.clear();
    sc.pruned.push(new);
    for &s in &buf[..count] {
        b.take();
        sc.pruned.push(Cand {
            sim: t.sim(n, s),
            slot: s,
        });
    }
    sc.pruned.sort_unstable_by(|a, b| b.cmp(a));
    select(t, &sc.pruned, m, b, &mut sc.kept);
    for (dst, c) in buf.iter_mut().zip(&sc.kept) {
        *dst = c.slot;
    }
    t.set_links(n, level, &buf[..sc.kept.len()]);
}

/// Links the freshly pushed `slot` (of `level`) into `t`'s graph.
fn graph_insert(t: &mut Tier, sc: &mut Scratch, slot: u32, level: u8, b: &mut Budget) {
    if t.entry == NONE {
        t.entry = slot;
        t.top = level;
        return;
    }
    sc.query.copy_from_slice(t.row_lines(slot));
    sc.q_scale = t.scale(slot);
    b.take();
    let mut ep = Cand {
        sim: t.qsim(codes(&sc.query), sc.q_scale, t.entry),
        slot: t.entry,
    };
    ep = greedy(t, sc, ep, level, b);
    sc.entries.clear();
    sc.entries.push(ep);
    for l in (0..=level.min(t.top)).rev() {
        search_layer(t, sc, l, EF_CONSTRUCTION, b);
        let found = std::mem::take(&mut sc.found);
        let mut selected = std::mem::take(&mut sc.selected);
        select(t, &found, M, b, &mut selected);
        let mut buf = [0u32; M0];
        for (dst, c) in buf.iter_mut().zip(&selected) {
            *dst = c.slot;
        }
        t.set_links(slot, l, &buf[..selected.len()]);
        for &c in &selected {
            link_back(t, sc, c.slot, Cand { sim: c.sim, slot }, l, b);
        }
        // The next layer down starts from everything found here.
        sc.entries.clear();
        sc.entries.extend_from_slice(&found);
        if sc.entries.is_empty() {
            sc.entries.push(ep);
        }
        sc.found = found;
        sc.selected = selected;
    }
    if level > t.top {
        t.entry = slot;
        t.top = level;
    }
}

/// The `k` most similar live rows of `t` at or above `min_cos`, best first,
/// by scanning every row; how many rows it compared.
fn scan(t: &Tier, sc: &mut Scratch, k: usize, min_cos: f32, out: &mut Vec<(u64, f32)>) -> usize {
    sc.results.clear();
    let q = codes(&sc.query);
    let row_bytes = t.lines * LINE_BYTES;
    let mut compared = 0;
    for (ci, ch) in t.chunks.iter().enumerate() {
        let n = (t.len as usize)
            .saturating_sub(ci * CHUNK_SLOTS)
            .min(CHUNK_SLOTS);
        if n == 0 {
            break;
        }
        vectors::dot_rows(q, &codes(&ch.codes)[..n * row_bytes], &mut sc.dots[..n]);
        compared += n;
        for i in 0..n {
            if ch.dead[i] {
                continue;
            }
            let sim = sc.dots[i] as f32 * sc.q_scale * ch.scales[i];
            if sim < min_cos {
                continue;
            }
            let cand = Cand {
                sim,
                slot: (ci * CHUNK_SLOTS + i) as u32,
            };
            if sc.results.len() < k {
                sc.results.push(Reverse(cand));
            } else if sc.results.peek().is_some_and(|w| cand > w.0) {
                sc.results.pop();
                sc.results.push(Reverse(cand));
            }
        }
    }
    sc.found.clear();
    sc.found.extend(sc.results.drain().map(|r| r.0));
    sc.found.sort_unstable_by(|a, b| b.cmp(a));
    out.extend(sc.found.iter().map(|c| (t.id(c.slot), c.sim)));
    compared
}

/// A tier being built to replace the serving one, and how far the copy
/// has read the serving tier's slots.
struct Rebuild {
    tier: Tier,
    cursor: u32,
}

/// One namespace's vectors: nearest-neighbour search by cosine, brute force
/// while small and an HNSW graph above that, with every call bounded. See
/// the module docs.
pub struct VectorIndex {
    dims: usize,
    lines: usize,
    serving: Tier,
    next: Option<Rebuild>,
    /// Chunks of replaced tiers, freed a few per call.
    retired: Vec<Chunk>,
    scratch: Scratch,
    rng: XorShift,
    ef_search: usize,
    flat_entries_max: usize,
    last_distances: usize,
    rebuilds: u64,
}

impl VectorIndex {
    /// An empty index of `dims` dimensions (clamped to 1..=[`DIMS_MAX`];
    /// vectors of any other length are refused).
    pub fn new(dims: usize) -> VectorIndex {
        VectorIndex::with_options(dims, Options::default())
    }

    pub fn with_options(dims: usize, o: Options) -> VectorIndex {
        let dims = dims.clamp(1, DIMS_MAX);
        let lines = dims.div_ceil(LINE_BYTES);
        let flat_entries_max = o.flat_entries_max.min(SLOTS_MAX);
        VectorIndex {
            dims,
            lines,
            serving: Tier::new(flat_entries_max == 0, lines, 0),
            next: None,
            retired: Vec::new(),
            scratch: Scratch::new(lines),
            // Never 0: xorshift's one fixed point.
            rng: XorShift(o.seed | 1),
            ef_search: o.ef_search.clamp(1, EF_MAX),
            flat_entries_max,
            last_distances: 0,
            rebuilds: 0,
        }
    }

    pub fn dims(&self) -> usize {
        self.dims
    }

    /// Live entries.
    pub fn len(&self) -> usize {
        self.serving.live()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn contains(&self, id: u64) -> bool {
        self.serving.map.get(id).is_some()
    }

    /// Memory held, in bytes: the arenas, links, maps and scratch of every
    /// tier (two while a rebuild runs) and chunks not yet freed.
    pub fn bytes(&self) -> usize {
        std::mem::size_of::<VectorIndex>()
            + self.serving.bytes()
            + self.next.as_ref().map_or(0, |r| r.tier.bytes())
            + self.retired.iter().map(Chunk::bytes).sum::<usize>()
            + self.retired.capacity() * std::mem::size_of::<Chunk>()
            + self.scratch.bytes()
    }

    pub fn ef_search(&self) -> usize {
        self.ef_search
    }

    /// Sets the candidates a graph search keeps (clamped to 1..=[`EF_MAX`]).
    pub fn set_ef_search(&mut self, ef: usize) {
        self.ef_search = ef.clamp(1, EF_MAX);
    }

    /// Whether searches walk a graph (else they scan).
    pub fn is_graph(&self) -> bool {
        self.serving.graph
    }

    /// Whether a replacement tier is being built.
    pub fn is_rebuilding(&self) -> bool {
        self.next.is_some()
    }

    /// Replacement tiers that have taken over so far.
    pub fn rebuilds(&self) -> u64 {
        self.rebuilds
    }

    /// Removed entries whose slots the serving tier still holds.
    pub fn tombstones(&self) -> usize {
        self.serving.dead as usize
    }

    /// Distance evaluations (rows compared) by the last insert, remove,
    /// search or maintain call: the measure of its work.
    pub fn last_distances(&self) -> usize {
        self.last_distances
    }

    fn check(&self, v: &[f32]) -> Result<(), VectorError> {
        if v.len() != self.dims {
            return Err(VectorError::Dims {
                got: v.len(),
                want: self.dims,
            });
        }
        if !v.iter().all(|x| x.is_finite()) {
            return Err(VectorError::NotFinite);
        }
        Ok(())
    }

    /// Stores `v` (normalised) under `id`, replacing what `id` held.
    pub fn insert(&mut self, id: u64, v: &[f32]) -> Result<(), VectorError> {
        self.check(v)?;
        if self.serving.len as usize >= SLOTS_MAX {
            self.last_distances = self.work(REBUILD_NODES_PER_WRITE);
            return Err(VectorError::Full);
        }
        self.kill(id);
        let scale = quantize(v, &mut self.scratch.query);
        let level = self.rng.level();
        let t = &mut self.serving;
        let slot = t.push(id, &self.scratch.query, scale, level)?;
        let mut b = Budget::new(INSERT_DISTANCES_MAX);
        if t.graph {
            graph_insert(t, &mut self.scratch, slot, level, &mut b);
        }
        t.migrate(MAP_MIGRATE_SLOTS_PER_WRITE);
        self.last_distances = b.used + self.work(REBUILD_NODES_PER_WRITE);
        self.maybe_rebuild();
        Ok(())
    }

    /// Removes `id`; whether it was there. Its slot becomes a tombstone.
    pub fn remove(&mut self, id: u64) -> bool {
        let found = self.kill(id);
        self.serving.migrate(MAP_MIGRATE_SLOTS_PER_WRITE);
        self.last_distances = self.work(REBUILD_NODES_PER_WRITE);
        self.maybe_rebuild();
        found
    }

    fn kill(&mut self, id: u64) -> bool {
        if let Some(r) = &mut self.next {
            r.tier.kill(id);
        }
        self.serving.kill(id)
    }

    /// Copies up to `nodes` (at most [`MAINTAIN_NODES_MAX`]) entries into a
    /// tier being rebuilt, for a caller with idle time; whether a rebuild
    /// is still running.
    pub fn maintain(&mut self, nodes: usize) -> bool {
        self.last_distances = self.work(nodes.min(MAINTAIN_NODES_MAX));
        self.next.is_some()
    }

    /// Into `out` (cleared first), the ids and cosines of at most `k`
    /// (clamped to [`EF_MAX`]) entries at least `min_cos` similar to `q`,
    /// best first. Approximate above the flat size: the graph's recall@1
    /// on near-duplicates is about 0.99 (`cargo bench --bench ann`).
    pub fn search(
        &mut self,
        q: &[f32],
        k: usize,
        min_cos: f32,
        out: &mut Vec<(u64, f32)>,
    ) -> Result<(), VectorError> {
        out.clear();
        self.check(q)?;
        let mut work = self.work(REBUILD_NODES_PER_SEARCH);
        let k = k.min(EF_MAX);
        if k == 0 || self.serving.live() == 0 {
            self.last_distances = work;
            return Ok(());
        }
        self.scratch.q_scale = quantize(q, &mut self.scratch.query);
        let (t, sc) = (&mut self.serving, &mut self.scratch);
        if !t.graph {
            work += scan(t, sc, k, min_cos, out);
            self.last_distances = work;
            return Ok(());
        }
        let mut b = Budget::new(SEARCH_DISTANCES_MAX);
        b.take();
        let ep = Cand {
            sim: t.qsim(codes(&sc.query), sc.q_scale, t.entry),
            slot: t.entry,
        };
        let ep = greedy(t, sc, ep, 0, &mut b);
        sc.entries.clear();
        sc.entries.push(ep);
        search_layer(t, sc, 0, self.ef_search.max(k), &mut b);
        out.extend(
            sc.found
                .iter()
                .take_while(|c| c.sim >= min_cos)
                .take(k)
                .map(|c| (t.id(c.slot), c.sim)),
        );
        self.last_distances = work + b.used;
        Ok(())
    }

    /// What [`VectorIndex::search`] returns, exactly: every live entry
    /// compared. O(n): for tests, benchmarks and audits of the graph.
    pub fn search_exact(
        &mut self,
        q: &[f32],
        k: usize,
        min_cos: f32,
        out: &mut Vec<(u64, f32)>,
    ) -> Result<(), VectorError> {
        out.clear();
        self.check(q)?;
        let k = k.min(EF_MAX);
        if k == 0 {
            return Ok(());
        }
        self.scratch.q_scale = quantize(q, &mut self.scratch.query);
        self.last_distances = scan(&self.serving, &mut self.scratch, k, min_cos, out);
        Ok(())
    }

    /// One call's share of the background work (none when `nodes` is 0,
    /// as for a search): frees a few retired chunks and copies up to
    /// `nodes` entries (at least [`REBUILD_FLAT_NODES_PER_WRITE`] into a
    /// flat tier) into the tier being rebuilt, which takes over once it has
    /// them all. Returns the distances it evaluated.
    fn work(&mut self, nodes: usize) -> usize {
        if nodes == 0 {
            return 0;
        }
        let keep = self.retired.len().saturating_sub(RETIRE_CHUNKS_PER_CALL);
        self.retired.truncate(keep);
        let VectorIndex {
            serving,
            next,
            scratch,
            rng,
            retired,
            rebuilds,
            ..
        } = self;
        let Some(r) = next else {
            return 0;
        };
        let nodes = if r.tier.graph {
            nodes
        } else {
            nodes.max(REBUILD_FLAT_NODES_PER_WRITE)
        };
        let mut used = 0;
        let (mut copied, mut scanned) = (0, 0);
        while copied < nodes && scanned < REBUILD_SCAN_SLOTS_MAX && r.cursor < serving.len {
            let s = r.cursor;
            r.cursor += 1;
            scanned += 1;
            if serving.is_dead(s) {
                continue;
            }
            let level = rng.level();
            // The new tier never holds more slots than the old: no Full.
            let Ok(slot) =
                r.tier
                    .push(serving.id(s), serving.row_lines(s), serving.scale(s), level)
            else {
                continue;
            };
            if r.tier.graph {
                let mut b = Budget::new(INSERT_DISTANCES_MAX);
                graph_insert(&mut r.tier, scratch, slot, level, &mut b);
                used += b.used;
            }
            copied += 1;
        }
        r.tier.migrate(MAP_MIGRATE_SLOTS_PER_WRITE);
        if r.cursor >= serving.len {
            if let Some(r) = next.take() {
                let old = std::mem::replace(serving, r.tier);
                retired.extend(old.chunks);
                *rebuilds += 1;
            }
        }
        used
    }

    /// Starts a rebuild when the serving tier has outgrown brute force or
    /// holds too many tombstones.
    fn maybe_rebuild(&mut self) {
        if self.next.is_some() {
            return;
        }
        let t = &self.serving;
        let (live, len, dead) = (t.live(), t.len as usize, t.dead as usize);
        let outgrown = !t.graph && live > self.flat_entries_max;
        let tombstoned =
            dead >= TOMBSTONES_REBUILD_MIN && dead * 100 > len * TOMBSTONES_PERCENT_MAX;
        if !outgrown && !tombstoned {
            return;
        }
        // Hysteresis: a graph goes back to a flat tier only at half the
        // size a flat one becomes a graph, so one entry either way does not
        // flip it.
        let graph = if t.graph {
            live > self.flat_entries_max / 2
        } else {
            live > self.flat_entries_max
        };
        self.next = Some(Rebuild {
            tier: Tier::new(graph, self.lines, live + live / 8),
            cursor: 0,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// xorshift64* test data (no dependency).
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }

        /// Roughly gaussian, unit variance: the sum of 4 uniforms.
        fn normal(&mut self) -> f32 {
            let s: f32 = (0..4)
                .map(|_| (self.next() >> 40) as f32 / (1u64 << 24) as f32)
                .sum();
            (s - 2.0) * 3.0f32.sqrt()
        }

        /// `base` (or the origin) plus gaussian noise of total variance
        /// `spread`, normalised.
        fn near(&mut self, base: Option<&[f32]>, dims: usize, spread: f32) -> Vec<f32> {
            let sd = (spread / dims as f32).sqrt();
            let mut v: Vec<f32> = (0..dims)
                .map(|i| base.map_or(0.0, |b| b[i]) + sd * self.normal())
                .collect();
            let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            v.iter_mut().for_each(|x| *x /= n);
            v
        }

        fn unit(&mut self, dims: usize) -> Vec<f32> {
            self.near(None, dims, 1.0)
        }
    }

    fn cos(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }

    /// Text-like data: `n` points around `centers` random centres (each
    /// point's cosine to its centre about 0.95, to its cluster's other
    /// points about 0.9).
    fn clustered(rng: &mut Rng, n: usize, centers: usize, dims: usize) -> Vec<Vec<f32>> {
        let cs: Vec<Vec<f32>> = (0..centers).map(|_| rng.unit(dims)).collect();
        (0..n)
            .map(|_| {
                let c = &cs[rng.below(centers)];
                rng.near(Some(c), dims, 0.1)
            })
            .collect()
    }

    /// A near-duplicate of `v`: cosine about 0.995.
    fn noisy(rng: &mut Rng, v: &[f32]) -> Vec<f32> {
        rng.near(Some(v), v.len(), 0.01)
    }

    fn opts(flat_entries_max: usize) -> Options {
        Options {
            flat_entries_max,
            ..Options::default()
        }
    }

    #[test]
    fn a_small_index_is_exact_best_first_and_honours_k_and_the_threshold() {
        let mut rng = Rng(1);
        let dims = 256;
        let mut idx = VectorIndex::new(dims);
        let data: Vec<Vec<f32>> = (0..500).map(|_| rng.unit(dims)).collect();
        for (i, v) in data.iter().enumerate() {
            idx.insert(i as u64 * 7, v).unwrap();
        }
        assert_eq!(idx.len(), 500);
        assert!(!idx.is_graph());
        let mut out = Vec::new();
        for (i, v) in data.iter().enumerate().take(50) {
            let q = noisy(&mut rng, v);
            idx.search(&q, 5, -1.0, &mut out).unwrap();
            assert_eq!(out.len(), 5);
            assert_eq!(out[0].0, i as u64 * 7);
            assert!(out.windows(2).all(|w| w[0].1 >= w[1].1), "{out:?}");
            for &(id, c) in &out {
                let exact = cos(&q, &data[id as usize / 7]);
                assert!((c - exact).abs() < 0.02, "{c} vs {exact}");
            }
            // Random unit vectors are nearly orthogonal: a threshold of 0.5
            // leaves the near-duplicate alone.
            idx.search(&q, 5, 0.5, &mut out).unwrap();
            assert_eq!(out.len(), 1);
            idx.search(&q, 5, 1.5, &mut out).unwrap();
            assert!(out.is_empty());
        }
    }

    #[test]
    fn hostile_input_is_refused_not_panicked_on() {
        let mut idx = VectorIndex::new(8);
        let mut out = vec![(1, 1.0)];
        assert_eq!(
            idx.insert(1, &[1.0; 7]),
            Err(VectorError::Dims { got: 7, want: 8 })
        );
        let mut nan = [0.5; 8];
        nan[3] = f32::NAN;
        assert_eq!(idx.insert(1, &nan), Err(VectorError::NotFinite));
        assert_eq!(
            idx.search(&[f32::INFINITY; 8], 1, 0.0, &mut out),
            Err(VectorError::NotFinite)
        );
        assert!(out.is_empty());
        // A zero vector is stored (its every cosine is 0); k = 0, an empty
        // index and a huge k are fine.
        idx.search(&[1.0; 8], 3, 0.0, &mut out).unwrap();
        assert!(out.is_empty());
        idx.insert(1, &[0.0; 8]).unwrap();
        idx.insert(2, &[3.0; 8]).unwrap(); // not unit: normalised
        idx.search(&[1.0; 8], 0, -1.0, &mut out).unwrap();
        assert!(out.is_empty());
        idx.search(&[1.0; 8], usize::MAX, -1.0, &mut out).unwrap();
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].0, 2);
        assert!((out[0].1 - 1.0).abs() < 0.01 && out[1].1 == 0.0, "{out:?}");
        assert!(!idx.remove(3));
        assert!(idx.remove(1) && !idx.remove(1));
        assert_eq!(idx.len(), 1);
        // Dimensions are clamped at construction.
        assert_eq!(VectorIndex::new(0).dims(), 1);
        assert_eq!(VectorIndex::new(1 << 20).dims(), DIMS_MAX);
    }

    /// Inserts `data`, letting any rebuild finish.
    fn build(o: Options, data: &[Vec<f32>]) -> VectorIndex {
        let mut idx = VectorIndex::with_options(data[0].len(), o);
        for (i, v) in data.iter().enumerate() {
            idx.insert(i as u64, v).unwrap();
        }
        while idx.maintain(MAINTAIN_NODES_MAX) {}
        idx
    }

    #[test]
    fn the_graph_finds_near_duplicates_in_clustered_data() {
        let mut rng = Rng(7);
        // Small enough for a debug build; the benchmark measures 100k.
        let (n, dims) = (4_000, 32);
        let data = clustered(&mut rng, n, 800, dims);
        let mut idx = build(Options::default(), &data);
        assert!(idx.is_graph() && idx.len() == n);
        let (mut hits, mut agree, queries) = (0, 0, 400);
        let (mut out, mut exact) = (Vec::new(), Vec::new());
        let mut distances = 0;
        for _ in 0..queries {
            let i = rng.below(n);
            let q = noisy(&mut rng, &data[i]);
            idx.search(&q, 1, 0.0, &mut out).unwrap();
            assert!(idx.last_distances() <= SEARCH_DISTANCES_MAX);
            distances += idx.last_distances();
            idx.search_exact(&q, 1, 0.0, &mut exact).unwrap();
            hits += usize::from(out.first().map(|r| r.0) == Some(i as u64));
            agree += usize::from(out.first() == exact.first());
        }
        let (recall, agreement) = (hits as f64 / queries as f64, agree as f64 / queries as f64);
        assert!(recall >= 0.98, "recall@1 {recall}");
        assert!(agreement >= 0.98, "agreement with brute force {agreement}");
        // And it is a search, not a scan in disguise.
        let per = distances / queries;
        assert!(per < n / 5, "{per} distances per search of {n}");
    }

    #[test]
    fn a_removed_id_is_never_returned() {
        let mut rng = Rng(3);
        let dims = 32;
        let data = clustered(&mut rng, 3_000, 60, dims);
        let mut idx = build(opts(256), &data);
        let mut removed = Vec::new();
        for i in (0..data.len()).step_by(3) {
            assert!(idx.remove(i as u64));
            removed.push(i);
        }
        assert_eq!(idx.len(), data.len() - removed.len());
        let mut out = Vec::new();
        for &i in &removed {
            assert!(!idx.contains(i as u64));
            idx.search(&data[i], 10, -1.0, &mut out).unwrap();
            assert_eq!(out.len(), 10, "a removed node still routes");
            assert!(out.iter().all(|r| r.0 % 3 != 0), "{out:?}");
        }
        // After the rebuild the tombstones are gone for good.
        while idx.maintain(MAINTAIN_NODES_MAX) {}
        assert!(idx.rebuilds() >= 2);
        assert_eq!(idx.tombstones(), 0);
        for &i in removed.iter().take(100) {
            idx.search(&data[i], 10, -1.0, &mut out).unwrap();
            assert!(out.iter().all(|r| r.0 % 3 != 0), "{out:?}");
        }
    }

    /// Inserts, replacements and removals far past the flat size and
    /// across many incremental rebuilds, in both directions, against a
    /// model: the length, the membership and the results stay right, and
    /// no call does more than its bound of work.
    #[test]
    fn churn_across_rebuilds_keeps_the_index_consistent_and_every_call_bounded() {
        let mut rng = Rng(11);
        let dims = 32;
        let flat = 100;
        let mut idx = VectorIndex::with_options(dims, opts(flat));
        let mut model: HashMap<u64, Vec<f32>> = HashMap::new();
        let centers: Vec<Vec<f32>> = (0..40).map(|_| rng.unit(dims)).collect();
        let (mut out, mut exact) = (Vec::new(), Vec::new());
        let (mut was_graph, mut back_to_flat) = (false, false);
        let (mut searches, mut found_self) = (0, 0);
        let (mut write_max, mut search_max, mut scan_max) = (0, 0, 0);
        for round in 0..8_000u64 {
            // Phases: grow, churn at a steady size, shrink, grow again.
            let target = match round / 2_000 {
                0 | 1 => 500,
                2 => 30,
                _ => 400,
            };
            let grow = model.len() < target;
            let op = rng.below(10);
            if (grow && op < 7) || (!grow && op < 3) {
                let id = if op == 0 && !model.is_empty() {
                    // Replace an existing id.
                    *model.keys().nth(rng.below(model.len())).unwrap()
                } else {
                    round + 1_000_000
                };
                let c = rng.below(40);
                let v = rng.near(Some(&centers[c]), dims, 0.1);
                idx.insert(id, &v).unwrap();
                model.insert(id, v);
                write_max = write_max.max(idx.last_distances());
            } else if !model.is_empty() {
                let id = *model.keys().nth(rng.below(model.len())).unwrap();
                assert!(idx.remove(id));
                model.remove(&id);
                write_max = write_max.max(idx.last_distances());
            }
            assert_eq!(idx.len(), model.len());
            was_graph |= idx.is_graph();
            back_to_flat |= was_graph && !idx.is_graph();
            if round % 7 == 0 && !model.is_empty() {
                let id = *model.keys().nth(rng.below(model.len())).unwrap();
                let q = noisy(&mut rng, &model[&id]);
                idx.search(&q, 5, -1.0, &mut out).unwrap();
                if idx.is_graph() {
                    search_max = search_max.max(idx.last_distances());
                } else {
                    scan_max = scan_max.max(idx.last_distances());
                }
                searches += 1;
                found_self += usize::from(out.first().map(|r| r.0) == Some(id));
                assert_eq!(out.len(), model.len().min(5));
                for &(rid, c) in &out {
                    let v = model.get(&rid).expect("a returned id is live");
                    assert!((c - cos(&q, v)).abs() < 0.03);
                }
                idx.search_exact(&q, 5, -1.0, &mut exact).unwrap();
                assert_eq!(exact.len(), out.len());
            }
        }
        assert!(was_graph && back_to_flat);
        assert!(idx.rebuilds() >= 5, "{} rebuilds", idx.rebuilds());
        let recall = found_self as f64 / searches as f64;
        assert!(recall >= 0.97, "recall@1 under churn {recall}");
        assert!(write_max <= WRITE_DISTANCES_MAX, "{write_max}");
        assert!(search_max <= SEARCH_DISTANCES_MAX, "{search_max}");
        // A flat tier grows while a graph is built from it: at most by
        // half, plus its tombstones.
        assert!(scan_max <= 2 * flat + TOMBSTONES_REBUILD_MIN, "{scan_max}");
        for (&id, v) in &model {
            assert!(idx.contains(id));
            idx.search(v, 1, 0.0, &mut out).unwrap();
            assert_eq!(out.first().map(|r| r.0), Some(id));
        }
    }

    /// The budgets are hard stops: a search or an insert given a few
    /// evaluations makes no more, and still answers (a search its best so
    /// far, an insert a linked node).
    #[test]
    fn a_budget_stops_a_search_and_an_insert_where_it_says() {
        let mut rng = Rng(17);
        let dims = 16;
        let data = clustered(&mut rng, 600, 20, dims);
        let mut idx = build(opts(0), &data);
        assert!(idx.is_graph());
        let t = &mut idx.serving;
        let sc = &mut idx.scratch;
        for allowed in [1, 5, 40, 200] {
            sc.q_scale = quantize(&data[7], &mut sc.query);
            let mut b = Budget::new(allowed);
            b.take();
            let ep = Cand {
                sim: t.qsim(codes(&sc.query), sc.q_scale, t.entry),
                slot: t.entry,
            };
            let ep = greedy(t, sc, ep, 0, &mut b);
            sc.entries.clear();
            sc.entries.push(ep);
            search_layer(t, sc, 0, EF_MAX, &mut b);
            assert!(b.used <= allowed, "{} of {allowed}", b.used);
            assert!(!sc.found.is_empty());
        }
        for allowed in [1, 10, 100] {
            let v = rng.unit(dims);
            let scale = quantize(&v, &mut sc.query);
            let row = sc.query.clone();
            let slot = t.push(10_000 + allowed as u64, &row, scale, 0).unwrap();
            let mut b = Budget::new(allowed);
            graph_insert(t, sc, slot, 0, &mut b);
            assert!(b.used <= allowed, "{} of {allowed}", b.used);
            assert!(!t.links(slot, 0).is_empty(), "linked on {allowed}");
        }
    }

    #[test]
    fn the_id_map_grows_without_losing_an_id() {
        let mut rng = Rng(5);
        let dims = 8;
        let mut idx = VectorIndex::with_options(dims, opts(usize::MAX));
        let n = 3 * MAP_INCREMENTAL_CAPACITY_MIN;
        let mut migrating = false;
        // Every fifth insert also removes the id before it.
        let removed = |i: u64| i % 5 == 4;
        for i in 0..n as u64 {
            idx.insert(i, &rng.unit(dims)).unwrap();
            migrating |= !idx.serving.map.old.is_empty();
            if removed(i) {
                assert!(idx.remove(i));
            }
        }
        assert!(migrating, "the map never grew incrementally");
        for i in 0..n as u64 {
            assert_eq!(idx.contains(i), !removed(i), "{i}");
        }
        assert_eq!(idx.len(), n - n / 5);
    }

    #[test]
    fn the_same_inserts_build_the_same_index() {
        let mut rng = Rng(9);
        let data = clustered(&mut rng, 1_500, 30, 32);
        let mut a = build(opts(100), &data);
        let mut b = build(opts(100), &data);
        let (mut ra, mut rb) = (Vec::new(), Vec::new());
        for v in data.iter().step_by(50) {
            a.search(v, 10, -1.0, &mut ra).unwrap();
            b.search(v, 10, -1.0, &mut rb).unwrap();
            assert_eq!(ra, rb);
        }
        assert_eq!(a.bytes(), b.bytes());
    }

    #[test]
    fn memory_per_entry_is_the_row_and_its_links() {
        let mut rng = Rng(13);
        // One full chunk (the arena grows a chunk at a time).
        let n = CHUNK_SLOTS;
        let data: Vec<Vec<f32>> = (0..n).map(|_| rng.unit(256)).collect();
        let idx = build(opts(0), &data);
        assert!(idx.is_graph() && !idx.is_rebuilding());
        let per = idx.bytes() / idx.len();
        // 256 code bytes, 128 of bottom links, ~20 of scale, id, level,
        // visited mark and count, the map, the upper layers: about 450.
        assert!((400..600).contains(&per), "{per} bytes per entry");
    }
}
