//! Streaming emission of a [`Plan`]: block 0 to the end, strictly sequential.

use std::fs::File;
use std::io::{self, BufWriter, Seek, SeekFrom, Write};
use std::path::Path;

use crate::error::{Error, Result};
use crate::model::DataSource;
use crate::plan::{PlacedFile, Plan, Summary};
use crate::raw::{BLOCK, BLOCK_U64, INODES_PER_BLOCK, INODE_SIZE};

static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];
const BATCH_BLOCKS: u64 = 256;

/// Where blocks go: zeros may be skipped by seekable sinks.
trait Sink {
    fn data(&mut self, b: &[u8]) -> io::Result<()>;
    fn zeros(&mut self, n: u64) -> io::Result<()>;
    fn finish(&mut self, total: u64) -> io::Result<()>;
}

struct StreamSink<W: Write>(W);

impl<W: Write> Sink for StreamSink<W> {
    fn data(&mut self, b: &[u8]) -> io::Result<()> {
        self.0.write_all(b)
    }
    fn zeros(&mut self, mut n: u64) -> io::Result<()> {
        while n > 0 {
            let k = n.min(ZEROS.len() as u64) as usize;
            self.0.write_all(&ZEROS[..k])?;
            n -= k as u64;
        }
        Ok(())
    }
    fn finish(&mut self, _total: u64) -> io::Result<()> {
        self.0.flush()
    }
}

/// A regular file: zero runs become holes (the file is sparse).
struct FileSink(BufWriter<File>);

impl Sink for FileSink {
    fn data(&mut self, b: &[u8]) -> io::Result<()> {
        self.0.write_all(b)
    }
    fn zeros(&mut self, n: u64) -> io::Result<()> {
        if n > 0 {
            let off = i64::try_from(n).map_err(io::Error::other)?;
            self.0.seek(SeekFrom::Current(off))?;
        }
        Ok(())
    }
    fn finish(&mut self, total: u64) -> io::Result<()> {
        self.0.flush()?;
        self.0.get_ref().set_len(total)?;
        self.0.get_ref().sync_all()
    }
}

enum Piece<'p> {
    Bytes(&'p [u8]),
    File(&'p PlacedFile),
    ITable,
}

fn wio(context: &str) -> impl FnOnce(io::Error) -> Error + '_ {
    move |e| Error::io(context, e)
}

fn emit<S: DataSource + ?Sized>(plan: &Plan, src: &mut S, sink: &mut dyn Sink) -> Result<()> {
    let mut pieces: Vec<(u64, u64, Piece<'_>)> = Vec::new(); // (start, blocks, piece)
    pieces.push((
        0,
        plan.head.len() as u64 / BLOCK_U64,
        Piece::Bytes(&plan.head),
    ));
    if let Some((start, bytes)) = &plan.bitmaps {
        pieces.push((*start, bytes.len() as u64 / BLOCK_U64, Piece::Bytes(bytes)));
    }
    for (b, bytes) in &plan.meta {
        pieces.push((*b, 1, Piece::Bytes(bytes)));
    }
    for f in &plan.files {
        if let Some(first) = f.runs.first() {
            let n: u64 = f.runs.iter().map(|r| r.1).sum();
            pieces.push((first.2, n, Piece::File(f)));
        }
    }
    pieces.push((plan.itable_start, plan.itable_blocks, Piece::ITable));
    pieces.sort_by_key(|p| p.0);

    let mut cur = 0u64;
    let mut buf = vec![0u8; (BATCH_BLOCKS * BLOCK_U64) as usize];
    for (start, blocks, piece) in &pieces {
        if *start < cur {
            return Err(Error::invalid(format!(
                "internal layout error: overlapping regions at block {start}"
            )));
        }
        sink.zeros((start - cur) * BLOCK_U64)
            .map_err(wio("writing the image"))?;
        match piece {
            Piece::Bytes(b) => sink.data(b).map_err(wio("writing the image"))?,
            Piece::ITable => emit_itable(plan, sink)?,
            Piece::File(f) => emit_file(f, src, sink, &mut buf)?,
        }
        cur = start + blocks;
    }
    let total = plan.summary.blocks;
    sink.zeros((total - cur) * BLOCK_U64)
        .map_err(wio("writing the image"))?;
    sink.finish(total * BLOCK_U64)
        .map_err(wio("finishing the image"))
}

fn emit_itable(plan: &Plan, sink: &mut dyn Sink) -> Result<()> {
    let mut zero_run = 0u64;
    let mut blk = vec![0u8; BLOCK];
    for j in 0..plan.itable_blocks {
        let first = (j * INODES_PER_BLOCK + 1) as u32;
        let last = first + INODES_PER_BLOCK as u32 - 1;
        let mut any = false;
        for (ino, bytes) in plan.inodes.range(first..=last) {
            if !any {
                blk.fill(0);
                any = true;
            }
            let off = (ino - first) as usize * INODE_SIZE;
            blk[off..off + INODE_SIZE].copy_from_slice(bytes);
        }
        if any {
            sink.zeros(zero_run * BLOCK_U64)
                .map_err(wio("writing the inode table"))?;
            zero_run = 0;
            sink.data(&blk).map_err(wio("writing the inode table"))?;
        } else {
            zero_run += 1;
        }
    }
    sink.zeros(zero_run * BLOCK_U64)
        .map_err(wio("writing the inode table"))
}

fn emit_file<S: DataSource + ?Sized>(
    f: &PlacedFile,
    src: &mut S,
    sink: &mut dyn Sink,
    buf: &mut [u8],
) -> Result<()> {
    let segs = &f.content.segments;
    let mut si = 0usize;
    for &(l, n, _) in &f.runs {
        let mut k = 0;
        while k < n {
            let m = (n - k).min(BATCH_BLOCKS);
            let a = (l + k) * BLOCK_U64;
            let b = a + m * BLOCK_U64;
            let out = &mut buf[..(m * BLOCK_U64) as usize];
            out.fill(0);
            while si < segs.len() && segs[si].offset + segs[si].len <= a {
                si += 1;
            }
            let mut j = si;
            while j < segs.len() && segs[j].offset < b {
                let lo = segs[j].offset.max(a);
                let hi = (segs[j].offset + segs[j].len).min(b);
                src.read_at(
                    f.content.source,
                    lo,
                    &mut out[(lo - a) as usize..(hi - a) as usize],
                )
                .map_err(|e| {
                    Error::io(
                        format!("reading file {:?} at offset {lo}", f.content.source),
                        e,
                    )
                })?;
                j += 1;
            }
            sink.data(out).map_err(wio("writing file data"))?;
            k += m;
        }
    }
    Ok(())
}

impl Plan {
    /// Streams the image to `out`, sequentially from byte 0, pulling file bytes from `src`.
    /// Zero blocks are written as zeros.
    pub fn write_to<W: Write, S: DataSource + ?Sized>(
        &self,
        src: &mut S,
        out: W,
    ) -> Result<Summary> {
        let mut sink = StreamSink(out);
        emit(self, src, &mut sink)?;
        Ok(self.summary.clone())
    }

    /// Writes the image to a new (truncated) file at `path`; zero runs become holes.
    pub fn write_to_path<S: DataSource + ?Sized>(
        &self,
        src: &mut S,
        path: &Path,
    ) -> Result<Summary> {
        let f =
            File::create(path).map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
        let mut sink = FileSink(BufWriter::with_capacity(1 << 20, f));
        emit(self, src, &mut sink)?;
        Ok(self.summary.clone())
    }
}
