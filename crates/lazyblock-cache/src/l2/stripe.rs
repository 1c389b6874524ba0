//! TEMPORARY stub (XOR parity only), replaced by the real codec.
#![allow(missing_docs, clippy::all)]
pub const HEADER_LEN: usize = 44;
pub fn shard_len(len: usize, k: usize) -> usize {
    len.div_ceil(k).div_ceil(64) * 64
}
#[derive(Debug)]
pub struct StripeHeader {
    pub k: u8,
    pub n: u8,
    pub index: u8,
    pub chunk_len: u32,
    pub id: [u8; 32],
}
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StripeError(String);
pub fn decode_frame(b: &[u8]) -> Result<(StripeHeader, &[u8]), StripeError> {
    if b.len() < HEADER_LEN || &b[..4] != b"LBS1" {
        return Err(StripeError("bad".into()));
    }
    let mut id = [0u8; 32];
    id.copy_from_slice(&b[12..44]);
    let h = StripeHeader {
        k: b[5],
        n: b[6],
        index: b[7],
        chunk_len: u32::from_le_bytes([b[8], b[9], b[10], b[11]]),
        id,
    };
    if h.k == 0 || b.len() != HEADER_LEN + shard_len(h.chunk_len as usize, h.k as usize) {
        return Err(StripeError("len".into()));
    }
    Ok((h, &b[HEADER_LEN..]))
}
pub struct Rebuilt {
    pub data: Vec<u8>,
    pub used_parity: bool,
}
pub struct Codec {
    k: usize,
    n: usize,
}
impl Codec {
    pub fn new(k: usize, n: usize) -> Result<Self, StripeError> {
        if k == 0 || n < k || n > k + 1 {
            return Err(StripeError("unsupported".into()));
        }
        Ok(Self { k, n })
    }
    pub fn key(&self, id: &[u8; 32], i: usize) -> String {
        format!("lbs1:{}-{}:{}:{i}", self.k, self.n, hex::encode(id))
    }
    pub fn encode(&self, id: &[u8; 32], chunk: &[u8]) -> Result<Vec<Vec<u8>>, StripeError> {
        let s = shard_len(chunk.len(), self.k);
        let mut out = Vec::new();
        let mut parity = vec![0u8; s];
        for i in 0..self.n {
            let mut f = Vec::with_capacity(HEADER_LEN + s);
            f.extend_from_slice(b"LBS1");
            f.extend_from_slice(&[1, self.k as u8, self.n as u8, i as u8]);
            f.extend_from_slice(&(chunk.len() as u32).to_le_bytes());
            f.extend_from_slice(id);
            if i < self.k {
                let start = (i * s).min(chunk.len());
                let end = ((i + 1) * s).min(chunk.len());
                let mut p = chunk[start..end].to_vec();
                p.resize(s, 0);
                for (a, b) in parity.iter_mut().zip(&p) {
                    *a ^= b;
                }
                f.extend_from_slice(&p);
            } else {
                f.extend_from_slice(&parity);
            }
            out.push(f);
        }
        Ok(out)
    }
    pub fn rebuild(
        &self,
        _id: &[u8; 32],
        len: usize,
        stripes: &[(usize, &[u8])],
    ) -> Result<Rebuilt, StripeError> {
        let s = shard_len(len, self.k);
        let mut shards: Vec<Option<Vec<u8>>> = vec![None; self.n];
        for (i, p) in stripes.iter().take(self.k) {
            shards[*i] = Some(p.to_vec());
        }
        let mut used_parity = false;
        if let Some(missing) = (0..self.k).find(|&i| shards[i].is_none()) {
            used_parity = true;
            let mut x = vec![0u8; s];
            for i in 0..self.n {
                if let Some(p) = &shards[i] {
                    for (a, b) in x.iter_mut().zip(p) {
                        *a ^= b;
                    }
                }
            }
            shards[missing] = Some(x);
        }
        let mut data = Vec::new();
        for i in 0..self.k {
            data.extend_from_slice(shards[i].as_ref().ok_or_else(|| StripeError("m".into()))?);
        }
        data.truncate(len);
        Ok(Rebuilt { data, used_parity })
    }
}
pub const MAX_CHUNK_LEN: usize = 4 << 20;
pub fn simd_engine() -> &'static str {
    "scalar"
}
impl Codec {
    pub fn new_scalar(k: usize, n: usize) -> Result<Self, StripeError> {
        Self::new(k, n)
    }
    pub fn k(&self) -> usize {
        self.k
    }
    pub fn n(&self) -> usize {
        self.n
    }
}
