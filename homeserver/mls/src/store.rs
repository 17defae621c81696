//! An openmls provider whose storage is a map of bytes that can be saved whole and loaded
//! again: the server keeps a group's public state this way in its database, a client its
//! groups and keys in its store file.

use std::collections::HashMap;
use std::io::Read;

use openmls_memory_storage::MemoryStorage;
use openmls_rust_crypto::RustCrypto;
use openmls_traits::OpenMlsProvider;

use crate::{Error, Result};

/// The crypto of RustCrypto and an in-memory storage that [`Provider::save`] writes out.
#[derive(Default)]
pub struct Provider {
    crypto: RustCrypto,
    storage: MemoryStorage,
}

impl OpenMlsProvider for Provider {
    type CryptoProvider = RustCrypto;
    type RandProvider = RustCrypto;
    type StorageProvider = MemoryStorage;

    fn storage(&self) -> &MemoryStorage {
        &self.storage
    }

    fn crypto(&self) -> &RustCrypto {
        &self.crypto
    }

    fn rand(&self) -> &RustCrypto {
        &self.crypto
    }
}

impl Provider {
    /// The storage's entries, sorted by key (so that equal states save to equal bytes): a
    /// count, then each key and value with their lengths, all lengths big-endian u64.
    pub fn save(&self) -> Vec<u8> {
        let values = self.storage.values.read().expect("the storage lock is never poisoned");
        let mut entries: Vec<(&Vec<u8>, &Vec<u8>)> = values.iter().collect();
        entries.sort();
        let mut out = Vec::with_capacity(8 + entries.iter().map(|(k, v)| 16 + k.len() + v.len()).sum::<usize>());
        out.extend_from_slice(&(entries.len() as u64).to_be_bytes());
        for (k, v) in entries {
            out.extend_from_slice(&(k.len() as u64).to_be_bytes());
            out.extend_from_slice(&(v.len() as u64).to_be_bytes());
            out.extend_from_slice(k);
            out.extend_from_slice(v);
        }
        out
    }

    /// A provider whose storage holds what [`Provider::save`] wrote.
    pub fn load(mut bytes: &[u8]) -> Result<Provider> {
        let bad = |_| Error::Malformed("a saved MLS state is truncated".into());
        let u64_at = |r: &mut &[u8]| -> Result<usize> {
            let mut b = [0u8; 8];
            r.read_exact(&mut b).map_err(bad)?;
            usize::try_from(u64::from_be_bytes(b)).map_err(|_| Error::Malformed("a length is too large".into()))
        };
        let count = u64_at(&mut bytes)?;
        let mut values = HashMap::with_capacity(count.min(1 << 16));
        for _ in 0..count {
            let (kl, vl) = (u64_at(&mut bytes)?, u64_at(&mut bytes)?);
            if kl.saturating_add(vl) > bytes.len() {
                return Err(Error::Malformed("a saved MLS state is truncated".into()));
            }
            let (k, rest) = bytes.split_at(kl);
            let (v, rest) = rest.split_at(vl);
            values.insert(k.to_vec(), v.to_vec());
            bytes = rest;
        }
        if !bytes.is_empty() {
            return Err(Error::Malformed("a saved MLS state has trailing bytes".into()));
        }
        Ok(Provider { crypto: RustCrypto::default(), storage: MemoryStorage { values: values.into() } })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saved_storage_loads_back_and_truncation_is_refused() {
        let p = Provider::default();
        p.storage.values.write().unwrap().insert(b"k1".to_vec(), b"value one".to_vec());
        p.storage.values.write().unwrap().insert(b"k0".to_vec(), Vec::new());
        let saved = p.save();
        let q = Provider::load(&saved).unwrap();
        assert_eq!(q.save(), saved);
        assert_eq!(q.storage.values.read().unwrap().get(&b"k1".to_vec()), Some(&b"value one".to_vec()));
        for cut in [1, 9, saved.len() - 1] {
            assert!(Provider::load(&saved[..cut]).is_err(), "cut at {cut}");
        }
        let mut longer = saved.clone();
        longer.push(0);
        assert!(Provider::load(&longer).is_err());
    }
}
