//! Archive transfers in SEDA 2.3 (Standard d'échange de données pour l'archivage), the French
//! state's exchange format with its archives services, without any I/O: the caller gathers a
//! tree of archive units and their files ([`Package`]); this crate writes the `ArchiveTransfer`
//! manifest ([`manifest`]), packs it with the files into a zip ([`Package::to_zip`]), and checks
//! a package it is handed ([`check`]): every file the manifest lists is there, with its size
//! and SHA-512 digest, and nothing else is.
//!
//! Invariant: the same package gives the same bytes (units and files in the caller's order,
//! identifiers numbered in that order, fixed zip times, no clock read here), so exporting the
//! same archive twice gives the same package.

mod check;
mod manifest;
mod package;

pub use check::{check, Problem, Report};
pub use manifest::manifest;
pub use package::{Agent, Appraisal, File, Level, Package, Signer, Unit};

/// The manifest's name inside the zip; files travel under `content/`.
pub const MANIFEST: &str = "manifest.xml";
/// SEDA 2.3's namespace.
pub const NAMESPACE: &str = "fr:gouv:culture:archivesdefrance:seda:v2.3";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("writing the manifest: {0}")]
    Xml(String),
    #[error("writing the zip: {0}")]
    Zip(#[from] zip::result::ZipError),
    #[error("two files at {0}")]
    DuplicatePath(String),
    #[error("a file path must be relative, without `..`: {0}")]
    BadPath(String),
}

impl From<quick_xml::Error> for Error {
    fn from(e: quick_xml::Error) -> Self {
        Error::Xml(e.to_string())
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Xml(e.to_string())
    }
}

/// The SHA-512 digest of `bytes`, in hexadecimal (SEDA's `MessageDigest` with
/// `algorithm="SHA-512"`).
pub fn sha512_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha512::digest(bytes))
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use super::*;

    fn package() -> Package {
        let mut letter = Unit::new(Level::Item, "Télégramme PARIS-2026-000001 : gaz & <électricité>");
        letter.system_id = Some("PARIS-2026-000001".into());
        letter.tags = vec!["energie".into()];
        letter.signers.push(Signer {
            name: "Alice".into(),
            identifier: "@alice:example.org".into(),
            signed_ms: 1_780_000_000_123,
            role: "Auteur".into(),
            signing_type: "ed25519".into(),
        });
        letter.files.push(File {
            path: "PARIS-2026-000001/record.json".into(),
            bytes: br#"{"reference":"PARIS-2026-000001"}"#.to_vec(),
            mime_type: "application/json".into(),
            format: "JSON".into(),
        });
        letter.files.push(File {
            path: "PARIS-2026-000001/body.txt".into(),
            bytes: "Le texte.".as_bytes().to_vec(),
            mime_type: "text/plain".into(),
            format: "Plain Text File".into(),
        });
        let mut root = Unit::new(Level::RecordGrp, "Correspondance de paris");
        root.children.push(letter);
        Package {
            identifier: "diplomatie-test".into(),
            date_ms: 1_780_000_000_000,
            comment: None,
            agreement: None,
            archival_agency: "archives".into(),
            transferring_agency: "example.org".into(),
            originating_agency: "paris".into(),
            root,
        }
    }

    /// The zip with `change` applied to its entries (name, bytes); `None` drops an entry.
    fn rewrite(zip: &[u8], change: impl Fn(&str, Vec<u8>) -> Option<Vec<u8>>, extra: Option<(&str, &[u8])>) -> Vec<u8> {
        let mut archive = zip::ZipArchive::new(std::io::Cursor::new(zip)).unwrap();
        let mut out = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        for i in 0..archive.len() {
            let mut entry = archive.by_index(i).unwrap();
            let name = entry.name().unwrap().into_owned();
            let mut bytes = Vec::new();
            entry.read_to_end(&mut bytes).unwrap();
            if let Some(bytes) = change(&name, bytes) {
                out.start_file(name, zip::write::SimpleFileOptions::default()).unwrap();
                out.write_all(&bytes).unwrap();
            }
        }
        if let Some((name, bytes)) = extra {
            out.start_file(name, zip::write::SimpleFileOptions::default()).unwrap();
            out.write_all(bytes).unwrap();
        }
        out.finish().unwrap().into_inner()
    }

    #[test]
    fn the_same_package_gives_the_same_bytes() {
        assert_eq!(package().to_zip().unwrap(), package().to_zip().unwrap());
    }

    #[test]
    fn a_sound_package_checks() {
        let report = check(&package().to_zip().unwrap());
        assert!(report.ok(), "{:?}", report.problems);
        assert_eq!(report.files, 2);
    }

    #[test]
    fn the_manifest_escapes_text_and_states_digests() {
        let xml = manifest(&package()).unwrap();
        assert!(xml.contains("gaz &amp; &lt;électricité&gt;"), "{xml}");
        assert!(xml.contains(&sha512_hex("Le texte.".as_bytes())));
        assert!(xml.contains("<Uri>content/PARIS-2026-000001/body.txt</Uri>"));
        assert!(xml.contains("<SigningTime>2026-05-28T20:26:40.123Z</SigningTime>"), "{xml}");
    }

    #[test]
    fn a_missing_file_a_changed_file_and_an_unlisted_file_are_found() {
        let zip = package().to_zip().unwrap();
        let missing = rewrite(&zip, |name, bytes| (!name.ends_with("body.txt")).then_some(bytes), None);
        assert_eq!(check(&missing).problems, vec![Problem::Missing("content/PARIS-2026-000001/body.txt".into())]);

        let changed = rewrite(
            &zip,
            |name, bytes| Some(if name.ends_with("body.txt") { b"Le textE.".to_vec() } else { bytes }),
            None,
        );
        assert_eq!(
            check(&changed).problems,
            vec![Problem::WrongDigest { uri: "content/PARIS-2026-000001/body.txt".into() }]
        );

        let longer = rewrite(
            &zip,
            |name, bytes| Some(if name.ends_with("body.txt") { b"Le texte..".to_vec() } else { bytes }),
            None,
        );
        let problems = check(&longer).problems;
        assert!(
            problems.contains(&Problem::WrongSize {
                uri: "content/PARIS-2026-000001/body.txt".into(),
                stated: 9,
                actual: 10
            }),
            "{problems:?}"
        );

        let unlisted = rewrite(&zip, |_, bytes| Some(bytes), Some(("content/extra.bin", b"x")));
        assert_eq!(check(&unlisted).problems, vec![Problem::Unlisted("content/extra.bin".into())]);

        let no_manifest = rewrite(&zip, |name, bytes| (name != MANIFEST).then_some(bytes), None);
        assert!(matches!(check(&no_manifest).problems[..], [Problem::Manifest(_)]));
        assert!(matches!(check(b"not a zip").problems[..], [Problem::Unreadable(_)]));
    }

    #[test]
    fn file_paths_stay_inside_content() {
        for bad in ["../etc/passwd", "/abs", "a//b", "a/./b", ""] {
            let mut p = package();
            p.root.children[0].files[0].path = bad.into();
            assert!(matches!(p.to_zip(), Err(Error::BadPath(_))), "{bad}");
        }
        let mut p = package();
        p.root.children[0].files[1].path = p.root.children[0].files[0].path.clone();
        assert!(matches!(p.to_zip(), Err(Error::DuplicatePath(_))));
    }
}
