//! The checker an archives service (or an operator before sending) runs on a package: the
//! manifest is there and lists files, and every listed file is in the zip with the size and the
//! SHA-512 digest the manifest states; nothing else travels unlisted. Schema validity is
//! xmllint's job (the tests run it against the official schemas); this checks what a schema
//! cannot: that the manifest tells the truth about the files.

use std::collections::BTreeSet;
use std::io::Read;

use quick_xml::escape::{resolve_predefined_entity, unescape};
use quick_xml::events::Event;
use quick_xml::Reader;

use crate::{sha512_hex, MANIFEST};

/// What is wrong with a package.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// Not a zip, or an entry that cannot be read.
    Unreadable(String),
    /// No `manifest.xml`, or one that is not well-formed XML.
    Manifest(String),
    /// The manifest lists a file the zip does not hold.
    Missing(String),
    /// The file's size is not the manifest's.
    WrongSize { uri: String, stated: u64, actual: u64 },
    /// The file's digest is not the manifest's (or the algorithm is not SHA-512).
    WrongDigest { uri: String },
    /// A file in the zip the manifest does not list.
    Unlisted(String),
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Problem::Unreadable(e) => write!(f, "unreadable package: {e}"),
            Problem::Manifest(e) => write!(f, "manifest: {e}"),
            Problem::Missing(uri) => write!(f, "{uri}: listed in the manifest, missing from the package"),
            Problem::WrongSize { uri, stated, actual } => {
                write!(f, "{uri}: {actual} bytes, the manifest states {stated}")
            }
            Problem::WrongDigest { uri } => write!(f, "{uri}: its SHA-512 digest is not the manifest's"),
            Problem::Unlisted(path) => write!(f, "{path}: in the package, not listed in the manifest"),
        }
    }
}

/// What a check found: the files verified, and the problems.
#[derive(Debug, Default)]
pub struct Report {
    pub files: usize,
    pub problems: Vec<Problem>,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// A file as the manifest describes it.
#[derive(Default)]
struct Listed {
    uri: String,
    digest: String,
    algorithm: String,
    size: Option<u64>,
}

/// Checks the zip `package` against its manifest.
pub fn check(package: &[u8]) -> Report {
    let mut report = Report::default();
    let mut zip = match zip::ZipArchive::new(std::io::Cursor::new(package)) {
        Ok(zip) => zip,
        Err(e) => {
            report.problems.push(Problem::Unreadable(e.to_string()));
            return report;
        }
    };
    let manifest = match read(&mut zip, MANIFEST) {
        Some(Ok(bytes)) => bytes,
        Some(Err(e)) => {
            report.problems.push(Problem::Unreadable(e));
            return report;
        }
        None => {
            report.problems.push(Problem::Manifest(format!("no {MANIFEST}")));
            return report;
        }
    };
    let listed = match listed_files(&manifest) {
        Ok(listed) => listed,
        Err(e) => {
            report.problems.push(Problem::Manifest(e));
            return report;
        }
    };
    let mut seen = BTreeSet::new();
    for file in listed {
        seen.insert(file.uri.clone());
        let bytes = match read(&mut zip, &file.uri) {
            Some(Ok(bytes)) => bytes,
            Some(Err(e)) => {
                report.problems.push(Problem::Unreadable(e));
                continue;
            }
            None => {
                report.problems.push(Problem::Missing(file.uri));
                continue;
            }
        };
        report.files += 1;
        let actual = bytes.len() as u64;
        if let Some(stated) = file.size.filter(|stated| *stated != actual) {
            report.problems.push(Problem::WrongSize { uri: file.uri.clone(), stated, actual });
        }
        if file.algorithm != "SHA-512" || !file.digest.eq_ignore_ascii_case(&sha512_hex(&bytes)) {
            report.problems.push(Problem::WrongDigest { uri: file.uri });
        }
    }
    let names: Vec<String> = zip.file_names().filter_map(|n| n.ok().map(|n| n.into_owned())).collect();
    for name in names {
        if name != MANIFEST && !name.ends_with('/') && !seen.contains(&name) {
            report.problems.push(Problem::Unlisted(name));
        }
    }
    report
}

/// An entry's bytes; `None` when the zip has no such entry.
fn read<R: std::io::Read + std::io::Seek>(zip: &mut zip::ZipArchive<R>, name: &str) -> Option<Result<Vec<u8>, String>> {
    let mut entry = match zip.by_name(name) {
        Ok(entry) => entry,
        Err(zip::result::ZipError::FileNotFound) => return None,
        Err(e) => return Some(Err(e.to_string())),
    };
    let mut bytes = Vec::new();
    Some(entry.read_to_end(&mut bytes).map(|_| bytes).map_err(|e| format!("{name}: {e}")))
}

/// The `BinaryDataObject`s of a manifest: their `Uri`, `MessageDigest` and `Size`.
fn listed_files(manifest: &[u8]) -> Result<Vec<Listed>, String> {
    let mut reader = Reader::from_reader(manifest);
    let mut buf = Vec::new();
    let mut out = Vec::new();
    let mut current: Option<Listed> = None;
    let mut field = String::new();
    let mut value = String::new();
    loop {
        match reader.read_event_into(&mut buf).map_err(|e| e.to_string())? {
            Event::Start(start) => {
                let name = start.local_name().as_ref().to_owned();
                if name == "BinaryDataObject" {
                    current = Some(Listed::default());
                } else if let Some(listed) = current.as_mut() {
                    if name == "MessageDigest" {
                        for attribute in start.attributes().flatten() {
                            if attribute.key.local_name().as_ref() == "algorithm" {
                                listed.algorithm = unescape(&attribute.value).map_err(|e| e.to_string())?.into_owned();
                            }
                        }
                    }
                }
                field = name;
                value.clear();
            }
            Event::Text(text) => value.push_str(&text.xml10_content()),
            Event::GeneralRef(reference) => match reference.resolve_char_ref().map_err(|e| e.to_string())? {
                Some(c) => value.push(c),
                None => value.push_str(
                    resolve_predefined_entity(&reference).ok_or_else(|| format!("unknown entity &{};", &*reference))?,
                ),
            },
            Event::End(end) => {
                if let Some(listed) = current.as_mut() {
                    let text = value.trim().to_owned();
                    match field.as_str() {
                        "Uri" => listed.uri = text,
                        "MessageDigest" => listed.digest = text,
                        "Size" => {
                            listed.size = Some(text.parse().map_err(|_| format!("Size {text:?} is not a number"))?)
                        }
                        _ => {}
                    }
                }
                if end.local_name().as_ref() == "BinaryDataObject" {
                    let listed = current.take().unwrap_or_default();
                    if listed.uri.is_empty() {
                        return Err("a BinaryDataObject without Uri".to_owned());
                    }
                    out.push(listed);
                }
                field.clear();
                value.clear();
            }
            Event::Eof => break,
            _ => {}
        }
        buf.clear();
    }
    Ok(out)
}
