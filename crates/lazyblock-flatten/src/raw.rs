//! Byte encoders for the ext4 on-disk structures the writer emits.
//!
//! Every checksum uses the fixed [`CSUM_SEED`] (feature `metadata_csum_seed`), never the UUID.

use crate::crc::crc32c_raw;
use crate::model::Timestamp;

pub(crate) const BLOCK: usize = 4096;
pub(crate) const BLOCK_U64: u64 = 4096;
pub(crate) const INODE_SIZE: usize = 256;
pub(crate) const INODES_PER_BLOCK: u64 = (BLOCK / INODE_SIZE) as u64;
pub(crate) const EXTRA_ISIZE: u16 = 32;
pub(crate) const BLOCKS_PER_GROUP: u64 = 8 * BLOCK_U64;
pub(crate) const MAX_INODES_PER_GROUP: u64 = 8 * BLOCK_U64;
pub(crate) const FIRST_INO: u32 = 11;
pub(crate) const ROOT_INO: u32 = 2;
pub(crate) const DESC_SIZE: usize = 64;

/// The metadata checksum seed stored in `s_checksum_seed` of every image ("lzbk").
pub(crate) const CSUM_SEED: u32 = 0x6b62_7a6c;
/// The directory hash seed stored in `s_hash_seed` of every image.
pub(crate) const HASH_SEED: [u8; 16] = *b"lazyblock-dirhsh";

pub(crate) const S_IFIFO: u16 = 0o010000;
pub(crate) const S_IFCHR: u16 = 0o020000;
pub(crate) const S_IFDIR: u16 = 0o040000;
pub(crate) const S_IFBLK: u16 = 0o060000;
pub(crate) const S_IFREG: u16 = 0o100000;
pub(crate) const S_IFLNK: u16 = 0o120000;
pub(crate) const S_IFSOCK: u16 = 0o140000;

pub(crate) const FT_REG: u8 = 1;
pub(crate) const FT_DIR: u8 = 2;
pub(crate) const FT_CHR: u8 = 3;
pub(crate) const FT_BLK: u8 = 4;
pub(crate) const FT_FIFO: u8 = 5;
pub(crate) const FT_SOCK: u8 = 6;
pub(crate) const FT_SYMLINK: u8 = 7;

pub(crate) const EXTENTS_FL: u32 = 0x0008_0000;

// Feature flags.
pub(crate) const COMPAT_EXT_ATTR: u32 = 0x0008;
pub(crate) const COMPAT_DIR_INDEX: u32 = 0x0020;
pub(crate) const COMPAT_SPARSE_SUPER2: u32 = 0x0200;
pub(crate) const INCOMPAT_FILETYPE: u32 = 0x0002;
pub(crate) const INCOMPAT_EXTENTS: u32 = 0x0040;
pub(crate) const INCOMPAT_64BIT: u32 = 0x0080;
pub(crate) const INCOMPAT_FLEX_BG: u32 = 0x0200;
pub(crate) const INCOMPAT_CSUM_SEED: u32 = 0x2000;
pub(crate) const RO_COMPAT_SPARSE_SUPER: u32 = 0x0001;
pub(crate) const RO_COMPAT_LARGE_FILE: u32 = 0x0002;
pub(crate) const RO_COMPAT_HUGE_FILE: u32 = 0x0008;
pub(crate) const RO_COMPAT_DIR_NLINK: u32 = 0x0020;
pub(crate) const RO_COMPAT_EXTRA_ISIZE: u32 = 0x0040;
pub(crate) const RO_COMPAT_METADATA_CSUM: u32 = 0x0400;

pub(crate) fn put16(b: &mut [u8], off: usize, v: u16) {
    b[off..off + 2].copy_from_slice(&v.to_le_bytes());
}
pub(crate) fn put32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_le_bytes());
}

/// Checksum seed of one inode: `crc(crc(CSUM_SEED, ino), generation)`; generation is 0.
pub(crate) fn inode_seed(ino: u32) -> u32 {
    let c = crc32c_raw(CSUM_SEED, &ino.to_le_bytes());
    crc32c_raw(c, &0u32.to_le_bytes())
}

/// `(base, extra)` of an ext4 timestamp with 2 epoch bits and nanoseconds.
pub(crate) fn encode_time(t: Timestamp) -> (u32, u32) {
    let base = t.secs as i32;
    let epoch = ((t.secs - i64::from(base)) >> 32) as u32 & 3;
    (base as u32, epoch | (t.nanos << 2))
}

/// Everything the writer puts into one inode.
#[derive(Debug, Clone)]
pub(crate) struct InodeFields {
    pub(crate) mode: u16,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    pub(crate) size: u64,
    pub(crate) links: u16,
    pub(crate) sectors: u64,
    pub(crate) flags: u32,
    pub(crate) i_block: [u8; 60],
    pub(crate) file_acl: u64,
    pub(crate) time: Timestamp,
    /// In-inode xattr area (everything after `128 + EXTRA_ISIZE`), if any.
    pub(crate) ibody_xattr: Option<Vec<u8>>,
}

pub(crate) const IBODY_XATTR_OFF: usize = 128 + EXTRA_ISIZE as usize;
pub(crate) const IBODY_XATTR_LEN: usize = INODE_SIZE - IBODY_XATTR_OFF;

pub(crate) fn encode_inode(ino: u32, f: &InodeFields) -> [u8; INODE_SIZE] {
    let mut b = [0u8; INODE_SIZE];
    let (t, tx) = encode_time(f.time);
    put16(&mut b, 0x00, f.mode);
    put16(&mut b, 0x02, f.uid as u16);
    put32(&mut b, 0x04, f.size as u32);
    put32(&mut b, 0x08, t); // atime
    put32(&mut b, 0x0C, t); // ctime
    put32(&mut b, 0x10, t); // mtime
    put16(&mut b, 0x18, f.gid as u16);
    put16(&mut b, 0x1A, f.links);
    put32(&mut b, 0x1C, f.sectors as u32);
    put32(&mut b, 0x20, f.flags);
    b[0x28..0x64].copy_from_slice(&f.i_block);
    put32(&mut b, 0x68, f.file_acl as u32);
    put32(&mut b, 0x6C, (f.size >> 32) as u32);
    put16(&mut b, 0x74, (f.sectors >> 32) as u16);
    put16(&mut b, 0x76, (f.file_acl >> 32) as u16);
    put16(&mut b, 0x78, (f.uid >> 16) as u16);
    put16(&mut b, 0x7A, (f.gid >> 16) as u16);
    put16(&mut b, 0x80, EXTRA_ISIZE);
    put32(&mut b, 0x84, tx); // ctime extra
    put32(&mut b, 0x88, tx); // mtime extra
    put32(&mut b, 0x8C, tx); // atime extra
    put32(&mut b, 0x90, t); // crtime
    put32(&mut b, 0x94, tx);
    if let Some(x) = &f.ibody_xattr {
        b[IBODY_XATTR_OFF..IBODY_XATTR_OFF + x.len()].copy_from_slice(x);
    }
    // Both checksum halves are zero while checksumming.
    let csum = crc32c_raw(inode_seed(ino), &b);
    put16(&mut b, 0x7C, csum as u16);
    put16(&mut b, 0x82, (csum >> 16) as u16);
    b
}

/// One extent: `len` blocks from logical block `logical` at physical block `phys`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Extent {
    pub(crate) logical: u32,
    pub(crate) len: u16,
    pub(crate) phys: u64,
}

/// Longest initialized extent.
pub(crate) const MAX_EXTENT_LEN: u64 = 32768;
const EXT_MAGIC: u16 = 0xF30A;
const ROOT_SLOTS: usize = 4;
const BLOCK_SLOTS: usize = (BLOCK - 12) / 12; // 340
const EXT_TAIL_OFF: usize = 12 + BLOCK_SLOTS * 12; // 4092

fn ext_header(b: &mut [u8], entries: usize, max: usize, depth: u16) {
    put16(b, 0, EXT_MAGIC);
    put16(b, 2, entries as u16);
    put16(b, 4, max as u16);
    put16(b, 6, depth);
    put32(b, 8, 0);
}

fn put_extent(b: &mut [u8], e: &Extent) {
    put32(b, 0, e.logical);
    put16(b, 4, e.len);
    put16(b, 6, (e.phys >> 32) as u16);
    put32(b, 8, e.phys as u32);
}

fn put_index(b: &mut [u8], logical: u32, child: u64) {
    put32(b, 0, logical);
    put32(b, 4, child as u32);
    put16(b, 8, (child >> 32) as u16);
    put16(b, 10, 0);
}

fn div_ceil(a: usize, b: usize) -> usize {
    a.div_ceil(b)
}

/// Number of extent-tree blocks (leaves and index blocks) outside the inode for `n` extents.
pub(crate) fn extent_tree_blocks(n: usize) -> u64 {
    if n <= ROOT_SLOTS {
        return 0;
    }
    let mut total = 0u64;
    let mut count = n;
    loop {
        let nodes = div_ceil(count, BLOCK_SLOTS);
        total += nodes as u64;
        if nodes <= ROOT_SLOTS {
            return total;
        }
        count = nodes;
    }
}

/// Builds the extent tree of `extents` (sorted by logical block). Tree blocks are numbered
/// consecutively from `first_block`: all leaves first, then each index level upwards.
/// Returns the 60-byte `i_block` root and the tree blocks.
pub(crate) fn build_extent_tree(
    ino: u32,
    extents: &[Extent],
    first_block: u64,
) -> ([u8; 60], Vec<Vec<u8>>) {
    let mut root = [0u8; 60];
    if extents.len() <= ROOT_SLOTS {
        ext_header(&mut root, extents.len(), ROOT_SLOTS, 0);
        for (i, e) in extents.iter().enumerate() {
            put_extent(&mut root[12 + 12 * i..], e);
        }
        return (root, Vec::new());
    }
    let seed = inode_seed(ino);
    let finish = |blk: &mut Vec<u8>| {
        let c = crc32c_raw(seed, &blk[..EXT_TAIL_OFF]);
        put32(blk, EXT_TAIL_OFF, c);
    };
    let mut blocks: Vec<Vec<u8>> = Vec::new();
    // Leaves.
    let mut level: Vec<(u32, u64)> = Vec::new(); // (first logical, block number)
    for chunk in extents.chunks(BLOCK_SLOTS) {
        let mut blk = vec![0u8; BLOCK];
        ext_header(&mut blk, chunk.len(), BLOCK_SLOTS, 0);
        for (i, e) in chunk.iter().enumerate() {
            put_extent(&mut blk[12 + 12 * i..], e);
        }
        finish(&mut blk);
        level.push((chunk[0].logical, first_block + blocks.len() as u64));
        blocks.push(blk);
    }
    let mut depth = 1u16;
    while level.len() > ROOT_SLOTS {
        let mut next = Vec::new();
        for chunk in level.chunks(BLOCK_SLOTS) {
            let mut blk = vec![0u8; BLOCK];
            ext_header(&mut blk, chunk.len(), BLOCK_SLOTS, depth);
            for (i, (l, c)) in chunk.iter().enumerate() {
                put_index(&mut blk[12 + 12 * i..], *l, *c);
            }
            finish(&mut blk);
            next.push((chunk[0].0, first_block + blocks.len() as u64));
            blocks.push(blk);
        }
        level = next;
        depth += 1;
    }
    ext_header(&mut root, level.len(), ROOT_SLOTS, depth);
    for (i, (l, c)) in level.iter().enumerate() {
        put_index(&mut root[12 + 12 * i..], *l, *c);
    }
    (root, blocks)
}

/// One directory entry.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DirEnt<'a> {
    pub(crate) ino: u32,
    pub(crate) ftype: u8,
    pub(crate) name: &'a [u8],
}

const DIR_TAIL: usize = 12;
const DIR_USABLE: usize = BLOCK - DIR_TAIL;

fn rec_len(name_len: usize) -> usize {
    (8 + name_len + 3) & !3
}

/// Blocks needed for a directory with these entry name lengths ("." and ".." included).
pub(crate) fn dir_block_count(name_lens: impl Iterator<Item = usize>, min_blocks: u64) -> u64 {
    let mut blocks = 1u64;
    let mut pos = 0usize;
    for l in name_lens {
        let r = rec_len(l);
        if pos + r > DIR_USABLE {
            blocks += 1;
            pos = 0;
        }
        pos += r;
    }
    blocks.max(min_blocks)
}

/// Linear directory blocks with checksum tails; entries in the given order.
pub(crate) fn build_dir_blocks(ino: u32, entries: &[DirEnt<'_>], min_blocks: u64) -> Vec<Vec<u8>> {
    let seed = inode_seed(ino);
    let mut out = Vec::new();
    let mut blk = vec![0u8; BLOCK];
    let mut pos = 0usize;
    let mut last = 0usize;
    let close = |blk: &mut Vec<u8>, pos: usize, last: usize| {
        if pos == 0 {
            put16(blk, 4, DIR_USABLE as u16); // empty block: one unused entry
        } else {
            put16(blk, last + 4, (DIR_USABLE - last) as u16);
        }
        put32(blk, DIR_USABLE, 0);
        put16(blk, DIR_USABLE + 4, DIR_TAIL as u16);
        blk[DIR_USABLE + 6] = 0;
        blk[DIR_USABLE + 7] = 0xDE;
        let c = crc32c_raw(seed, &blk[..DIR_USABLE]);
        put32(blk, DIR_USABLE + 8, c);
    };
    for e in entries {
        let r = rec_len(e.name.len());
        if pos + r > DIR_USABLE {
            close(&mut blk, pos, last);
            out.push(std::mem::replace(&mut blk, vec![0u8; BLOCK]));
            pos = 0;
        }
        put32(&mut blk, pos, e.ino);
        put16(&mut blk, pos + 4, r as u16);
        blk[pos + 6] = e.name.len() as u8;
        blk[pos + 7] = e.ftype;
        blk[pos + 8..pos + 8 + e.name.len()].copy_from_slice(e.name);
        last = pos;
        pos += r;
    }
    close(&mut blk, pos, last);
    out.push(blk);
    while (out.len() as u64) < min_blocks {
        let mut b = vec![0u8; BLOCK];
        close(&mut b, 0, 0);
        out.push(b);
    }
    out
}

/// An xattr name split into the ext4 name index and the suffix.
pub(crate) fn xattr_index(name: &[u8]) -> Option<(u8, &[u8])> {
    const PREFIXES: [(&[u8], u8); 3] = [(b"user.", 1), (b"trusted.", 4), (b"security.", 6)];
    for (p, idx) in PREFIXES {
        if let Some(rest) = name.strip_prefix(p) {
            return Some((idx, rest));
        }
    }
    None
}

/// One xattr ready to encode (suffix, index, value); sorted like ext4 expects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct XattrEnt {
    pub(crate) index: u8,
    pub(crate) name: Vec<u8>,
    pub(crate) value: Vec<u8>,
}

impl XattrEnt {
    fn sort_key(&self) -> (u8, usize, &[u8]) {
        (self.index, self.name.len(), &self.name)
    }
    fn entry_len(&self) -> usize {
        (16 + self.name.len() + 3) & !3
    }
    fn value_len(&self) -> usize {
        (self.value.len() + 3) & !3
    }
}

/// Sorts entries into ext4 order: by name index, then name length, then name bytes.
pub(crate) fn sort_xattrs(v: &mut [XattrEnt]) {
    v.sort_by(|a, b| a.sort_key().cmp(&b.sort_key()));
}

fn xattr_hash(e: &XattrEnt) -> u32 {
    let mut h = 0u32;
    for &c in &e.name {
        h = (h << 5) ^ (h >> 27) ^ u32::from(c);
    }
    let mut padded = e.value.clone();
    padded.resize(e.value_len(), 0);
    for w in padded.chunks_exact(4) {
        h = (h << 16) ^ (h >> 16) ^ u32::from_le_bytes([w[0], w[1], w[2], w[3]]);
    }
    h
}

/// Bytes the entries need in a region (entries + 4-byte terminator + values).
pub(crate) fn xattr_space(v: &[XattrEnt]) -> usize {
    v.iter()
        .map(|e| e.entry_len() + e.value_len())
        .sum::<usize>()
        + 4
}

/// Writes entries at `region[first..]` and values at the end of `region`; value offsets
/// are relative to `base`. Returns the entry hashes. Caller checked the space.
fn put_xattrs(region: &mut [u8], first: usize, base: usize, v: &[XattrEnt]) -> Vec<u32> {
    let mut pos = first;
    let mut vend = region.len();
    let mut hashes = Vec::with_capacity(v.len());
    for e in v {
        let h = xattr_hash(e);
        hashes.push(h);
        let offs = if e.value.is_empty() {
            0
        } else {
            vend -= e.value_len();
            region[vend..vend + e.value.len()].copy_from_slice(&e.value);
            vend - base
        };
        region[pos] = e.name.len() as u8;
        region[pos + 1] = e.index;
        put16(region, pos + 2, offs as u16);
        put32(region, pos + 4, 0);
        put32(region, pos + 8, e.value.len() as u32);
        put32(region, pos + 12, h);
        region[pos + 16..pos + 16 + e.name.len()].copy_from_slice(&e.name);
        pos += e.entry_len();
    }
    hashes
}

/// The in-inode xattr area (magic + entries + values), or `None` if it does not fit.
pub(crate) fn ibody_xattrs(v: &[XattrEnt]) -> Option<Vec<u8>> {
    if v.is_empty() || xattr_space(v) > IBODY_XATTR_LEN - 4 {
        return None;
    }
    let mut r = vec![0u8; IBODY_XATTR_LEN];
    put32(&mut r, 0, 0xEA02_0000);
    put_xattrs(&mut r, 4, 4, v);
    Some(r)
}

/// Whether the entries fit in one xattr block.
pub(crate) fn fits_xattr_block(v: &[XattrEnt]) -> bool {
    xattr_space(v) <= BLOCK - 32
}

/// One xattr block at block number `blocknr`.
pub(crate) fn xattr_block(v: &[XattrEnt], blocknr: u64) -> Vec<u8> {
    let mut b = vec![0u8; BLOCK];
    put32(&mut b, 0, 0xEA02_0000);
    put32(&mut b, 4, 1); // refcount
    put32(&mut b, 8, 1); // blocks
    let hashes = put_xattrs(&mut b, 32, 0, v);
    let mut h = 0u32;
    for eh in hashes {
        if eh == 0 {
            h = 0;
            break;
        }
        h = (h << 16) ^ (h >> 16) ^ eh;
    }
    put32(&mut b, 12, h);
    let c = crc32c_raw(crc32c_raw(CSUM_SEED, &blocknr.to_le_bytes()), &b);
    put32(&mut b, 16, c);
    b
}

/// `i_block` of a device inode (old encoding when it fits, else the new one).
pub(crate) fn device_block(major: u32, minor: u32) -> [u8; 60] {
    let mut b = [0u8; 60];
    if major < 256 && minor < 256 {
        put32(&mut b, 0, (major << 8) | minor);
    } else {
        put32(
            &mut b,
            4,
            (minor & 0xFF) | (major << 8) | ((minor & !0xFF) << 12),
        );
    }
    b
}

/// One 64-byte group descriptor with its checksum.
#[derive(Debug, Clone, Default)]
pub(crate) struct GroupDesc {
    pub(crate) block_bitmap: u64,
    pub(crate) inode_bitmap: u64,
    pub(crate) inode_table: u64,
    pub(crate) free_blocks: u32,
    pub(crate) free_inodes: u32,
    pub(crate) used_dirs: u32,
    pub(crate) itable_unused: u32,
    pub(crate) block_bitmap_csum: u32,
    pub(crate) inode_bitmap_csum: u32,
}

pub(crate) const BG_INODE_ZEROED: u16 = 0x0004;

pub(crate) fn encode_group_desc(group: u32, d: &GroupDesc) -> [u8; DESC_SIZE] {
    let mut b = [0u8; DESC_SIZE];
    put32(&mut b, 0x00, d.block_bitmap as u32);
    put32(&mut b, 0x04, d.inode_bitmap as u32);
    put32(&mut b, 0x08, d.inode_table as u32);
    put16(&mut b, 0x0C, d.free_blocks as u16);
    put16(&mut b, 0x0E, d.free_inodes as u16);
    put16(&mut b, 0x10, d.used_dirs as u16);
    put16(&mut b, 0x12, BG_INODE_ZEROED);
    put16(&mut b, 0x18, d.block_bitmap_csum as u16);
    put16(&mut b, 0x1A, d.inode_bitmap_csum as u16);
    put16(&mut b, 0x1C, d.itable_unused as u16);
    put32(&mut b, 0x20, (d.block_bitmap >> 32) as u32);
    put32(&mut b, 0x24, (d.inode_bitmap >> 32) as u32);
    put32(&mut b, 0x28, (d.inode_table >> 32) as u32);
    put16(&mut b, 0x2C, (d.free_blocks >> 16) as u16);
    put16(&mut b, 0x2E, (d.free_inodes >> 16) as u16);
    put16(&mut b, 0x30, (d.used_dirs >> 16) as u16);
    put16(&mut b, 0x32, (d.itable_unused >> 16) as u16);
    put16(&mut b, 0x38, (d.block_bitmap_csum >> 16) as u16);
    put16(&mut b, 0x3A, (d.inode_bitmap_csum >> 16) as u16);
    let mut c = crc32c_raw(CSUM_SEED, &group.to_le_bytes());
    c = crc32c_raw(c, &b); // bg_checksum is still zero here
    put16(&mut b, 0x1E, c as u16);
    b
}

/// Superblock parameters.
#[derive(Debug, Clone)]
pub(crate) struct SuperParams {
    pub(crate) inodes_count: u32,
    pub(crate) blocks_count: u64,
    pub(crate) free_blocks: u64,
    pub(crate) free_inodes: u32,
    pub(crate) inodes_per_group: u32,
    pub(crate) log_groups_per_flex: u8,
    pub(crate) uuid: [u8; 16],
    pub(crate) label: [u8; 16],
}

/// The 1024-byte superblock (it lives at byte 1024 of block 0).
pub(crate) fn encode_superblock(p: &SuperParams) -> [u8; 1024] {
    let mut b = [0u8; 1024];
    put32(&mut b, 0x00, p.inodes_count);
    put32(&mut b, 0x04, p.blocks_count as u32);
    put32(&mut b, 0x08, 0); // reserved blocks
    put32(&mut b, 0x0C, p.free_blocks as u32);
    put32(&mut b, 0x10, p.free_inodes);
    put32(&mut b, 0x14, 0); // first data block
    put32(&mut b, 0x18, 2); // log block size: 1024 << 2
    put32(&mut b, 0x1C, 2); // log cluster size
    put32(&mut b, 0x20, BLOCKS_PER_GROUP as u32);
    put32(&mut b, 0x24, BLOCKS_PER_GROUP as u32);
    put32(&mut b, 0x28, p.inodes_per_group);
    put16(&mut b, 0x36, 0xFFFF); // max mount count: never forces a check
    put16(&mut b, 0x38, 0xEF53);
    put16(&mut b, 0x3A, 1); // clean
    put16(&mut b, 0x3C, 1); // errors: continue
    put32(&mut b, 0x4C, 1); // dynamic revision
    put32(&mut b, 0x54, FIRST_INO);
    put16(&mut b, 0x58, INODE_SIZE as u16);
    put32(
        &mut b,
        0x5C,
        COMPAT_EXT_ATTR | COMPAT_DIR_INDEX | COMPAT_SPARSE_SUPER2,
    );
    put32(
        &mut b,
        0x60,
        INCOMPAT_FILETYPE
            | INCOMPAT_EXTENTS
            | INCOMPAT_64BIT
            | INCOMPAT_FLEX_BG
            | INCOMPAT_CSUM_SEED,
    );
    put32(
        &mut b,
        0x64,
        RO_COMPAT_SPARSE_SUPER
            | RO_COMPAT_LARGE_FILE
            | RO_COMPAT_HUGE_FILE
            | RO_COMPAT_DIR_NLINK
            | RO_COMPAT_EXTRA_ISIZE
            | RO_COMPAT_METADATA_CSUM,
    );
    b[0x68..0x78].copy_from_slice(&p.uuid);
    b[0x78..0x88].copy_from_slice(&p.label);
    b[0xEC..0xFC].copy_from_slice(&HASH_SEED);
    b[0xFC] = 1; // default hash: half_md4
    put16(&mut b, 0xFE, DESC_SIZE as u16);
    put32(&mut b, 0x100, 0x000C); // default mount options: user_xattr, acl
    put32(&mut b, 0x150, (p.blocks_count >> 32) as u32);
    put32(&mut b, 0x158, (p.free_blocks >> 32) as u32);
    put16(&mut b, 0x15C, EXTRA_ISIZE);
    put16(&mut b, 0x15E, EXTRA_ISIZE);
    put32(&mut b, 0x160, 0x0002); // unsigned directory hash
    b[0x174] = p.log_groups_per_flex;
    b[0x175] = 1; // checksum type crc32c
                  // s_backup_bgs (0x24C) stay 0: sparse_super2 with no backups.
    put32(&mut b, 0x270, CSUM_SEED);
    let c = crc32c_raw(!0, &b[..0x3FC]);
    put32(&mut b, 0x3FC, c);
    b
}

/// Sets bits `from..to` of `bm`.
pub(crate) fn set_bits(bm: &mut [u8], from: u64, to: u64) {
    let mut i = from;
    while i < to && i % 8 != 0 {
        bm[(i / 8) as usize] |= 1 << (i % 8);
        i += 1;
    }
    while i + 8 <= to {
        bm[(i / 8) as usize] = 0xFF;
        i += 8;
    }
    while i < to {
        bm[(i / 8) as usize] |= 1 << (i % 8);
        i += 1;
    }
}

/// Number of zero bits among `from..to`.
pub(crate) fn count_zero_bits(bm: &[u8], from: u64, to: u64) -> u64 {
    let mut n = 0;
    let mut i = from;
    while i < to && i % 8 != 0 {
        n += u64::from(bm[(i / 8) as usize] >> (i % 8) & 1 == 0);
        i += 1;
    }
    while i + 8 <= to {
        n += u64::from(bm[(i / 8) as usize].count_zeros());
        i += 8;
    }
    while i < to {
        n += u64::from(bm[(i / 8) as usize] >> (i % 8) & 1 == 0);
        i += 1;
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bitmaps() {
        let mut bm = vec![0u8; 8];
        set_bits(&mut bm, 3, 21);
        assert_eq!(bm[..4], [0xF8, 0xFF, 0x1F, 0x00]);
        assert_eq!(count_zero_bits(&bm, 0, 64), 64 - 18);
        assert_eq!(count_zero_bits(&bm, 3, 21), 0);
        assert_eq!(count_zero_bits(&bm, 1, 5), 2);
        set_bits(&mut bm, 60, 64);
        assert_eq!(bm[7], 0xF0);
        assert_eq!(count_zero_bits(&bm, 56, 64), 4);
        set_bits(&mut bm, 5, 5);
        assert_eq!(count_zero_bits(&bm, 0, 64), 64 - 22);
    }

    #[test]
    fn extent_tree_shapes() {
        assert_eq!(extent_tree_blocks(0), 0);
        assert_eq!(extent_tree_blocks(4), 0);
        assert_eq!(extent_tree_blocks(5), 1);
        assert_eq!(extent_tree_blocks(340 * 4), 4);
        assert_eq!(extent_tree_blocks(340 * 4 + 1), 5 + 1);
        assert_eq!(extent_tree_blocks(340 * 340 * 4), 340 * 4 + 4);

        let ext: Vec<Extent> = (0..2000u32)
            .map(|i| Extent {
                logical: i * 2,
                len: 1,
                phys: 1000 + u64::from(i),
            })
            .collect();
        let (root, blocks) = build_extent_tree(12, &ext, 50);
        assert_eq!(blocks.len() as u64, extent_tree_blocks(2000));
        // root: magic, 1 entry (one index block), max 4, depth 2.
        assert_eq!(root[0..8], [0x0A, 0xF3, 1, 0, 4, 0, 2, 0]);
        // Root points at the last block (the single depth-1 index block).
        assert_eq!(
            u32::from_le_bytes([root[16], root[17], root[18], root[19]]),
            50 + 6
        );
        // Leaf 1 starts at extent 340 (logical 680), checksum tail verifies.
        let leaf = &blocks[1];
        assert_eq!(u16::from_le_bytes([leaf[2], leaf[3]]), 340);
        assert_eq!(
            u32::from_le_bytes([leaf[12], leaf[13], leaf[14], leaf[15]]),
            680
        );
        let idx = &blocks[6];
        assert_eq!(u16::from_le_bytes([idx[2], idx[3]]), 6);
        assert_eq!(
            u32::from_le_bytes([idx[24], idx[25], idx[26], idx[27]]),
            680
        );
        for b in &blocks {
            let c = crc32c_raw(inode_seed(12), &b[..4092]);
            assert_eq!(u32::from_le_bytes([b[4092], b[4093], b[4094], b[4095]]), c);
        }
        // Small trees stay in the inode.
        let (root, blocks) = build_extent_tree(12, &ext[..3], 50);
        assert!(blocks.is_empty());
        assert_eq!(root[2], 3);
        assert_eq!(root[6], 0);
    }

    #[test]
    fn dir_packing() {
        let names: Vec<Vec<u8>> = (0..300)
            .map(|i| format!("name-{i:04}").into_bytes())
            .collect();
        let mut ents = vec![
            DirEnt {
                ino: 2,
                ftype: FT_DIR,
                name: b".",
            },
            DirEnt {
                ino: 2,
                ftype: FT_DIR,
                name: b"..",
            },
        ];
        ents.extend(names.iter().map(|n| DirEnt {
            ino: 20,
            ftype: FT_REG,
            name: n,
        }));
        // 12 + 12 + 300 * 20 = 6024 bytes -> 2 blocks.
        let n = dir_block_count(ents.iter().map(|e| e.name.len()), 1);
        assert_eq!(n, 2);
        let blocks = build_dir_blocks(2, &ents, 4);
        assert_eq!(blocks.len(), 4);
        for b in &blocks {
            // walk entries: rec_lens must end exactly at the tail
            let mut pos = 0;
            while pos < 4084 {
                let r = u16::from_le_bytes([b[pos + 4], b[pos + 5]]) as usize;
                assert!(r >= 8);
                pos += r;
            }
            assert_eq!(pos, 4084);
            assert_eq!(b[4084 + 7], 0xDE);
        }
    }

    #[test]
    fn times() {
        assert_eq!(encode_time(Timestamp::new(0, 0)), (0, 0));
        assert_eq!(encode_time(Timestamp::new(-1, 5)), (u32::MAX, 5 << 2));
        assert_eq!(encode_time(Timestamp::new(1 << 31, 0)), (1 << 31, 1));
        assert_eq!(
            encode_time(Timestamp::new(1_700_000_000, 999_999_999)).1,
            999_999_999 << 2
        );
    }

    #[test]
    fn superblock_checksum() {
        let p = SuperParams {
            inodes_count: 1,
            blocks_count: 2,
            free_blocks: 0,
            free_inodes: 0,
            inodes_per_group: 16,
            log_groups_per_flex: 4,
            uuid: [1; 16],
            label: [0; 16],
        };
        let b = encode_superblock(&p);
        assert_eq!(crc32c_raw(!0, &b[..0x3FC]).to_le_bytes(), b[0x3FC..]);
        // No checksum seeded from the UUID: a different UUID changes only uuid + sb csum.
        let b2 = encode_superblock(&SuperParams { uuid: [2; 16], ..p });
        let diff: Vec<usize> = (0..1024).filter(|&i| b[i] != b2[i]).collect();
        assert!(diff
            .iter()
            .all(|&i| (0x68..0x78).contains(&i) || i >= 0x3FC));
    }

    #[test]
    fn group_desc_checksum_covers_group_number() {
        let d = GroupDesc {
            block_bitmap: 5,
            ..Default::default()
        };
        let a = encode_group_desc(0, &d);
        let b = encode_group_desc(1, &d);
        assert_ne!(a[0x1E..0x20], b[0x1E..0x20]);
        assert_eq!(a[..0x1E], b[..0x1E]);
    }

    #[test]
    fn xattr_layouts() {
        let mut v = vec![
            XattrEnt {
                index: 6,
                name: b"capability".to_vec(),
                value: vec![1; 12],
            },
            XattrEnt {
                index: 1,
                name: b"b".to_vec(),
                value: b"xy".to_vec(),
            },
            XattrEnt {
                index: 1,
                name: b"aa".to_vec(),
                value: vec![],
            },
        ];
        sort_xattrs(&mut v);
        assert_eq!(v[0].name, b"b");
        assert_eq!(v[1].name, b"aa");
        assert_eq!(xattr_space(&v), 20 + 20 + 28 + 4 + 12 + 4);
        let r = ibody_xattrs(&v).expect("fits");
        assert_eq!(r.len(), 96);
        assert_eq!(r[..4], 0xEA02_0000u32.to_le_bytes());
        // first entry "b": value "xy" padded to 4 at the very end; offset relative to byte 4
        assert_eq!(u16::from_le_bytes([r[6], r[7]]) as usize, 96 - 4 - 4);
        assert_eq!(&r[92..94], b"xy");
        let big = vec![XattrEnt {
            index: 1,
            name: b"big".to_vec(),
            value: vec![7; 200],
        }];
        assert!(ibody_xattrs(&big).is_none());
        assert!(fits_xattr_block(&big));
        let blk = xattr_block(&big, 99);
        assert_eq!(u16::from_le_bytes([blk[34], blk[35]]) as usize, 4096 - 200);
    }
}
