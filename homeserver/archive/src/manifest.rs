//! The `ArchiveTransfer` manifest, element by element in the order SEDA 2.3's schemas require.

use quick_xml::events::{BytesDecl, BytesEnd, BytesStart, BytesText, Event};
use quick_xml::Writer;

use crate::package::{content_path, Agent, Package, Unit};
use crate::{sha512_hex, Error, NAMESPACE};

/// The manifest of `package` (UTF-8 XML).
pub fn manifest(package: &Package) -> Result<String, Error> {
    let mut x = Xml(Writer::new_with_indent(Vec::new(), b' ', 2));
    x.0.write_event(Event::Decl(BytesDecl::new("1.0", Some("UTF-8"), None)))?;
    x.open("ArchiveTransfer", &[("xmlns", NAMESPACE)])?;
    if let Some(comment) = &package.comment {
        x.leaf("Comment", comment)?;
    }
    x.leaf("Date", &date_time(package.date_ms))?;
    x.leaf("MessageIdentifier", &package.identifier)?;
    if let Some(agreement) = &package.agreement {
        x.leaf("ArchivalAgreement", agreement)?;
    }
    x.open("CodeListVersions", &[])?;
    for list in [
        "MessageDigestAlgorithmCodeListVersion",
        "MimeTypeCodeListVersion",
        "FileFormatCodeListVersion",
        "AppraisalRuleCodeListVersion",
        "ClassificationRuleCodeListVersion",
    ] {
        x.leaf(list, &format!("{list}0"))?;
    }
    x.close("CodeListVersions")?;

    let units = package.root.walk();
    x.open("DataObjectPackage", &[])?;
    let mut object = 0;
    for (n, unit) in units.iter().enumerate().filter(|(_, u)| !u.files.is_empty()) {
        x.open("DataObjectGroup", &[("id", &format!("GRP{n}"))])?;
        for file in &unit.files {
            object += 1;
            x.open("BinaryDataObject", &[("id", &format!("BDO{object}"))])?;
            x.leaf("DataObjectVersion", "BinaryMaster_1")?;
            x.leaf("Uri", &content_path(&file.path)?)?;
            x.leaf_with("MessageDigest", &[("algorithm", "SHA-512")], &sha512_hex(&file.bytes))?;
            x.leaf("Size", &file.bytes.len().to_string())?;
            x.open("FormatIdentification", &[])?;
            x.leaf("FormatLitteral", &file.format)?;
            x.leaf("MimeType", &file.mime_type)?;
            x.close("FormatIdentification")?;
            x.open("FileInfo", &[])?;
            x.leaf("Filename", file.path.rsplit('/').next().unwrap_or(&file.path))?;
            x.close("FileInfo")?;
            x.close("BinaryDataObject")?;
        }
        x.close("DataObjectGroup")?;
    }
    x.open("DescriptiveMetadata", &[])?;
    let mut next = 0;
    write_unit(&mut x, &package.root, &mut next, &package.transferring_agency)?;
    x.close("DescriptiveMetadata")?;
    x.open("ManagementMetadata", &[])?;
    x.leaf("AcquisitionInformation", "Versement")?;
    x.leaf("LegalStatus", "Public Archive")?;
    x.leaf("OriginatingAgencyIdentifier", &package.originating_agency)?;
    x.leaf("SubmissionAgencyIdentifier", &package.transferring_agency)?;
    x.close("ManagementMetadata")?;
    x.close("DataObjectPackage")?;
    for (name, id) in
        [("ArchivalAgency", &package.archival_agency), ("TransferringAgency", &package.transferring_agency)]
    {
        x.open(name, &[])?;
        x.leaf("Identifier", id)?;
        x.close(name)?;
    }
    x.close("ArchiveTransfer")?;
    String::from_utf8(x.0.into_inner()).map_err(|e| Error::Xml(e.to_string()))
}

/// A unit and its children; `next` numbers units in the same depth-first order as
/// [`Unit::walk`], so a unit's data object group is `GRP<its number>`.
fn write_unit(x: &mut Xml, unit: &Unit, next: &mut usize, owner: &str) -> Result<(), Error> {
    let n = *next;
    *next += 1;
    x.open("ArchiveUnit", &[("id", &format!("AU{n}"))])?;
    if unit.appraisal.is_some() || unit.restricted {
        x.open("Management", &[])?;
        if let Some(rule) = &unit.appraisal {
            x.open("AppraisalRule", &[])?;
            x.leaf("Rule", &rule.rule)?;
            x.leaf("StartDate", &date(rule.start_ms))?;
            x.leaf("FinalAction", if rule.keep { "Keep" } else { "Destroy" })?;
            x.close("AppraisalRule")?;
        }
        if unit.restricted {
            x.open("ClassificationRule", &[])?;
            x.leaf("ClassificationLevel", "DR")?;
            x.leaf("ClassificationOwner", owner)?;
            x.close("ClassificationRule")?;
        }
        x.close("Management")?;
    }
    x.open("Content", &[])?;
    x.leaf("DescriptionLevel", unit.level.as_str())?;
    x.leaf("Title", &unit.title)?;
    if let Some(id) = &unit.system_id {
        x.leaf("OriginatingSystemId", id)?;
    }
    if let Some(description) = &unit.description {
        x.leaf("Description", description)?;
    }
    if let Some(kind) = &unit.document_type {
        x.leaf("DocumentType", kind)?;
    }
    for tag in &unit.tags {
        x.open("Keyword", &[])?;
        x.leaf("KeywordContent", tag)?;
        x.leaf("KeywordType", "subject")?;
        x.close("Keyword")?;
    }
    if let Some(agency) = &unit.originating_agency {
        x.open("OriginatingAgency", &[])?;
        x.leaf("Identifier", &agency.identifier)?;
        x.close("OriginatingAgency")?;
    }
    for (name, agents) in [("Writer", &unit.writers), ("Addressee", &unit.addressees), ("Recipient", &unit.recipients)]
    {
        for agent in agents {
            write_agent(x, name, agent)?;
        }
    }
    if let Some(ms) = unit.sent_ms {
        x.leaf("SentDate", &date_time(ms))?;
    }
    if let Some(ms) = unit.start_ms {
        x.leaf("StartDate", &date_time(ms))?;
    }
    if let Some(ms) = unit.end_ms {
        x.leaf("EndDate", &date_time(ms))?;
    }
    if !unit.signers.is_empty() {
        // The record carries its signatures (enveloped): it is both the signed document and
        // the signature.
        x.open("SigningInformation", &[])?;
        x.leaf("SigningRole", "SignedDocument")?;
        x.leaf("SigningRole", "Signature")?;
        for signer in &unit.signers {
            x.open("SignatureDescription", &[])?;
            x.open("Signer", &[])?;
            x.leaf("FullName", &signer.name)?;
            x.leaf("Identifier", &signer.identifier)?;
            x.leaf("SigningTime", &date_time(signer.signed_ms))?;
            x.leaf("Role", &signer.role)?;
            x.close("Signer")?;
            x.leaf("SigningType", &signer.signing_type)?;
            x.close("SignatureDescription")?;
        }
        x.close("SigningInformation")?;
    }
    x.close("Content")?;
    for child in &unit.children {
        write_unit(x, child, next, owner)?;
    }
    if !unit.files.is_empty() {
        x.open("DataObjectReference", &[])?;
        x.leaf("DataObjectGroupReferenceId", &format!("GRP{n}"))?;
        x.close("DataObjectReference")?;
    }
    x.close("ArchiveUnit")
}

fn write_agent(x: &mut Xml, element: &str, agent: &Agent) -> Result<(), Error> {
    x.open(element, &[])?;
    x.leaf(if agent.corporate { "Corpname" } else { "FullName" }, &agent.name)?;
    x.leaf("Identifier", &agent.identifier)?;
    if let Some(role) = &agent.role {
        x.leaf("Role", role)?;
    }
    x.close(element)
}

/// `xsd:dateTime` in UTC, to the millisecond when there is one.
pub(crate) fn date_time(ms: i64) -> String {
    let at = time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    at.format(&time::format_description::well_known::Rfc3339).unwrap_or_else(|_| "1970-01-01T00:00:00Z".to_owned())
}

/// `xsd:date` (UTC).
fn date(ms: i64) -> String {
    date_time(ms)[..10].to_owned()
}

/// quick-xml's writer with the three moves a manifest needs.
struct Xml(Writer<Vec<u8>>);

impl Xml {
    fn open(&mut self, name: &str, attributes: &[(&str, &str)]) -> Result<(), Error> {
        let mut start = BytesStart::new(name);
        for attribute in attributes {
            start.push_attribute(*attribute);
        }
        self.0.write_event(Event::Start(start))?;
        Ok(())
    }

    fn close(&mut self, name: &str) -> Result<(), Error> {
        self.0.write_event(Event::End(BytesEnd::new(name)))?;
        Ok(())
    }

    fn leaf(&mut self, name: &str, text: &str) -> Result<(), Error> {
        self.leaf_with(name, &[], text)
    }

    fn leaf_with(&mut self, name: &str, attributes: &[(&str, &str)], text: &str) -> Result<(), Error> {
        self.open(name, attributes)?;
        self.0.write_event(Event::Text(BytesText::new(text)))?;
        self.close(name)
    }
}
