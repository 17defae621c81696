//! What a transfer holds: archive units in a tree, each with its descriptive metadata and its
//! files, and the agencies around the transfer.

use std::io::Write;

use crate::{manifest, Error, MANIFEST};

/// An `ArchiveTransfer`: the units under one root, from the transferring agency (this server)
/// to the archival agency (the ministry's archives service).
#[derive(Clone, Debug)]
pub struct Package {
    /// `MessageIdentifier`: names the transfer, derived by the caller from what it holds so that
    /// the same export gives the same identifier.
    pub identifier: String,
    /// `Date` of the message, milliseconds since the epoch (the newest content, not the clock).
    pub date_ms: i64,
    pub comment: Option<String>,
    /// `ArchivalAgreement`, when one is configured.
    pub agreement: Option<String>,
    pub archival_agency: String,
    pub transferring_agency: String,
    /// The producing service (`OriginatingAgencyIdentifier`): a functional group, a crisis cell.
    pub originating_agency: String,
    pub root: Unit,
}

/// ISAD(G) levels SEDA uses for `DescriptionLevel`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    RecordGrp,
    SubGrp,
    File,
    Item,
}

impl Level {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Level::RecordGrp => "RecordGrp",
            Level::SubGrp => "SubGrp",
            Level::File => "File",
            Level::Item => "Item",
        }
    }
}

/// A person (`name`, identifier) or an organisation (`corporate`), with the role it played.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Agent {
    pub name: String,
    pub identifier: String,
    pub corporate: bool,
    pub role: Option<String>,
}

/// Who signed a unit's record, when, and how (`SigningInformation`).
#[derive(Clone, Debug)]
pub struct Signer {
    pub name: String,
    pub identifier: String,
    pub signed_ms: i64,
    /// What the signer did (author, approval, signature).
    pub role: String,
    /// The signature's algorithm and format, e.g. `ed25519 (Matrix canonical JSON)`.
    pub signing_type: String,
}

/// How long a unit is kept and what happens then (`AppraisalRule`).
#[derive(Clone, Debug)]
pub struct Appraisal {
    /// The rule's identifier in the archives service's repository (e.g. `APP-10Y`).
    pub rule: String,
    /// When the retention starts, milliseconds since the epoch.
    pub start_ms: i64,
    /// `Keep` (true) or `Destroy` at the end.
    pub keep: bool,
}

/// A file of a unit: its path under `content/` and its bytes.
#[derive(Clone, Debug)]
pub struct File {
    pub path: String,
    pub bytes: Vec<u8>,
    pub mime_type: String,
    /// A readable format name (`FormatLitteral`).
    pub format: String,
}

/// An archive unit (`ArchiveUnit`): a correspondence, a room's messages, a cell's log, or a
/// grouping of them.
#[derive(Clone, Debug)]
pub struct Unit {
    pub level: Level,
    pub title: String,
    pub description: Option<String>,
    /// The identifier in the producing system (a correspondence reference, a room id).
    pub system_id: Option<String>,
    /// The kind of document, in words (`Télégramme diplomatique`).
    pub document_type: Option<String>,
    /// Keywords (interest tags).
    pub tags: Vec<String>,
    pub originating_agency: Option<Agent>,
    pub writers: Vec<Agent>,
    /// For action.
    pub addressees: Vec<Agent>,
    /// For information.
    pub recipients: Vec<Agent>,
    pub sent_ms: Option<i64>,
    pub start_ms: Option<i64>,
    pub end_ms: Option<i64>,
    /// When set, the unit's record carries these signatures (enveloped in the record).
    pub signers: Vec<Signer>,
    pub appraisal: Option<Appraisal>,
    /// The protection level when restricted (`DR`: Diffusion Restreinte).
    pub restricted: bool,
    pub files: Vec<File>,
    pub children: Vec<Unit>,
}

impl Unit {
    /// A unit with only its level and title.
    pub fn new(level: Level, title: impl Into<String>) -> Unit {
        Unit {
            level,
            title: title.into(),
            description: None,
            system_id: None,
            document_type: None,
            tags: Vec::new(),
            originating_agency: None,
            writers: Vec::new(),
            addressees: Vec::new(),
            recipients: Vec::new(),
            sent_ms: None,
            start_ms: None,
            end_ms: None,
            signers: Vec::new(),
            appraisal: None,
            restricted: false,
            files: Vec::new(),
            children: Vec::new(),
        }
    }

    /// Every unit of the tree, this one first, depth first.
    pub(crate) fn walk(&self) -> Vec<&Unit> {
        let mut out = vec![self];
        for child in &self.children {
            out.extend(child.walk());
        }
        out
    }
}

impl Package {
    /// The zip: `manifest.xml`, then every file under `content/` in the tree's order, with fixed
    /// times and permissions so that the same package gives the same bytes.
    pub fn to_zip(&self) -> Result<Vec<u8>, Error> {
        let manifest = manifest(self)?;
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated)
            .last_modified_time(zip::DateTime::default())
            .unix_permissions(0o644);
        let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        zip.start_file(MANIFEST, options)?;
        zip.write_all(manifest.as_bytes())?;
        let mut seen = std::collections::HashSet::new();
        for unit in self.root.walk() {
            for file in &unit.files {
                let path = content_path(&file.path)?;
                if !seen.insert(path.clone()) {
                    return Err(Error::DuplicatePath(path));
                }
                zip.start_file(path, options)?;
                zip.write_all(&file.bytes)?;
            }
        }
        Ok(zip.finish()?.into_inner())
    }
}

/// `content/<path>`, refusing absolute paths and `..` (a file name comes from user content).
pub(crate) fn content_path(path: &str) -> Result<String, Error> {
    if path.is_empty() || path.starts_with('/') || path.split('/').any(|p| p.is_empty() || p == "." || p == "..") {
        return Err(Error::BadPath(path.to_owned()));
    }
    Ok(format!("content/{path}"))
}
