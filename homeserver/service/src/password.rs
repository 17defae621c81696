//! Password hashing with Argon2id (the `argon2` crate), its working memory mapped apart.
//!
//! Argon2id deliberately needs memory: 7 MiB a hash with 5 passes here, the first of the
//! settings OWASP's password storage guide lists as equal in strength (19 MiB with 2 passes,
//! the argon2 crate's default, costs the same time for more memory; hashes made with it, as
//! with any parameters, still verify: they are in the PHC string). Taken from the general allocator, that memory
//! stays with the process after a burst of logins; mapped on its own, it goes back to the system
//! as soon as the hash is done. Hashes are stored in the PHC string format, as Synapse and every
//! password library read them.

use argon2::{
    password_hash::{PasswordHash, Salt, SaltString},
    Algorithm, Argon2, Block, Params, Version,
};

/// Argon2's working memory, mapped apart from the heap and unmapped on drop.
struct Blocks {
    map: memmap2::MmapMut,
    count: usize,
}

impl Blocks {
    fn new(count: usize) -> std::io::Result<Blocks> {
        let map = memmap2::MmapMut::map_anon(count * Block::SIZE)?;
        Ok(Blocks { map, count })
    }
}

impl AsMut<[Block]> for Blocks {
    fn as_mut(&mut self) -> &mut [Block] {
        let ptr = self.map.as_mut_ptr();
        assert_eq!(ptr as usize % std::mem::align_of::<Block>(), 0, "mappings are page-aligned");
        // SAFETY: the mapping is `count * Block::SIZE` bytes, page-aligned (more than Block's
        // 64-byte alignment), zero-filled (a valid Block is any bit pattern of 128 u64), and
        // borrowed mutably for as long as the returned slice lives.
        unsafe { std::slice::from_raw_parts_mut(ptr.cast::<Block>(), self.count) }
    }
}

fn argon2(params: Params) -> Argon2<'static> {
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

fn compute(params: &Params, password: &[u8], salt: &[u8], out: &mut [u8]) -> Result<(), String> {
    let mut blocks = Blocks::new(params.block_count()).map_err(|e| e.to_string())?;
    argon2(params.clone()).hash_password_into_with_memory(password, salt, out, &mut blocks).map_err(|e| e.to_string())
}

/// The parameters of new hashes: m=7168 KiB, t=5, p=1.
fn params() -> Params {
    Params::new(7 * 1024, 5, 1, None).expect("valid Argon2 parameters")
}

/// Hashes a password into a PHC string (`$argon2id$v=19$m=7168,t=5,p=1$salt$hash`).
pub fn hash(password: &str) -> Result<String, String> {
    let params = params();
    let salt = SaltString::generate(&mut rand::rngs::OsRng);
    let mut raw_salt = [0u8; Salt::RECOMMENDED_LENGTH];
    let raw_salt = salt.decode_b64(&mut raw_salt).map_err(|e| e.to_string())?;
    let mut out = vec![0u8; params.output_len().unwrap_or(Params::DEFAULT_OUTPUT_LEN)];
    compute(&params, password.as_bytes(), raw_salt, &mut out)?;
    let output = argon2::password_hash::Output::new(&out).map_err(|e| e.to_string())?;
    let phc = PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: (&params).try_into().map_err(|e: argon2::password_hash::Error| e.to_string())?,
        salt: Some(salt.as_salt()),
        hash: Some(output),
    };
    Ok(phc.to_string())
}

/// Checks a password against a PHC string, in constant time.
pub fn verify(password: &str, phc: &str) -> bool {
    let Ok(parsed) = PasswordHash::new(phc) else { return false };
    let (Some(salt), Some(expected)) = (parsed.salt, parsed.hash) else { return false };
    let Ok(params) = Params::try_from(&parsed) else { return false };
    let mut raw_salt = [0u8; 64];
    let Ok(raw_salt) = salt.decode_b64(&mut raw_salt) else { return false };
    let mut out = vec![0u8; expected.len()];
    if compute(&params, password.as_bytes(), raw_salt, &mut out).is_err() {
        return false;
    }
    argon2::password_hash::Output::new(&out).is_ok_and(|o| o == expected)
}

#[cfg(test)]
mod tests {
    use argon2::{PasswordHasher, PasswordVerifier};

    use super::*;

    #[test]
    fn hashes_verify_and_wrong_passwords_do_not() {
        let h = hash("correct horse").unwrap();
        assert!(h.starts_with("$argon2id$v=19$m=7168,t=5,p=1$"));
        assert!(verify("correct horse", &h));
        assert!(!verify("correct hors", &h));
        assert!(!verify("correct horse", "not a phc string"));
    }

    #[test]
    fn interoperates_with_the_argon2_crate_both_ways() {
        // Our hash verifies with the crate's verifier, and the crate's hash with ours.
        let ours = hash("s3cret").unwrap();
        let parsed = PasswordHash::new(&ours).unwrap();
        assert!(Argon2::default().verify_password(b"s3cret", &parsed).is_ok());
        let salt = SaltString::generate(&mut rand::rngs::OsRng);
        let theirs = Argon2::default().hash_password(b"s3cret", &salt).unwrap().to_string();
        assert!(verify("s3cret", &theirs));
        assert!(!verify("other", &theirs));
    }
}
