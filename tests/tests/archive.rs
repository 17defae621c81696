//! Archiving in SEDA 2.3, black box: a functional group's transfer for a period (its formal
//! correspondence with records, texts and attachments, its rooms' messages), and a crisis
//! cell's, written at stand-down. Every package is validated against the official schemas
//! (the `seda` kit's `validate`, xmllint, offline), checked by `diplomatie archive check`, and
//! exported twice to the same bytes; a package missing a file or with a changed file is caught.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use diplomatie_tests::{assert_error, backend_tests, Backend, Client, TestServer};
use reqwest::Method;
use serde_json::{json, Value};

backend_tests!(a_group_period_is_transferred_in_seda, a_stood_down_cell_is_handed_to_archiving);

const ORG: &str = r#"
users:
  - { localpart: root, password: pw, admin: true }
  - { localpart: alice, password: pw, group: paris }
  - { localpart: bob, password: pw, group: dgm }
groups:
  - { slug: paris, name: "Ambassade à Paris", managers: [alice] }
  - { slug: dgm, name: DGM, managers: [bob] }
  - { slug: cabinet, name: Cabinet }
"#;

const EXPORT: &str = "/_diplomatie/admin/v1/archive/export";

/// The `seda` kit: $SEDA_KIT, ../shared/seda beside the repository, or /work/shared/seda.
fn seda_kit() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let candidates = [
        std::env::var("SEDA_KIT").ok().map(PathBuf::from),
        Some(root.join("../shared/seda")),
        Some("/work/shared/seda".into()),
    ];
    candidates.into_iter().flatten().find(|p| p.join("validate").exists()).expect("the seda kit (set SEDA_KIT)")
}

/// Validates a package's manifest against SEDA 2.3's schemas.
fn validate(dir: &Path, package: &[u8]) {
    let manifest = dir.join("manifest.xml");
    std::fs::write(&manifest, entry(package, "manifest.xml").expect("a manifest")).unwrap();
    let out = std::process::Command::new(seda_kit().join("validate")).arg(&manifest).output().expect("run validate");
    assert!(
        out.status.success(),
        "the manifest does not validate: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn entry(package: &[u8], name: &str) -> Option<Vec<u8>> {
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(package)).unwrap();
    let mut file = zip.by_name(name).ok()?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).unwrap();
    Some(bytes)
}

fn names(package: &[u8]) -> Vec<String> {
    zip::ZipArchive::new(std::io::Cursor::new(package)).unwrap().file_names().map(|n| n.unwrap().into_owned()).collect()
}

/// The package with `change` applied to its entries (`None` drops one).
fn rewrite(package: &[u8], change: impl Fn(&str, Vec<u8>) -> Option<Vec<u8>>) -> Vec<u8> {
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(package)).unwrap();
    let mut out = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for i in 0..zip.len() {
        let mut file = zip.by_index(i).unwrap();
        let name = file.name().unwrap().into_owned();
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).unwrap();
        if let Some(bytes) = change(&name, bytes) {
            out.start_file(name, zip::write::SimpleFileOptions::default()).unwrap();
            out.write_all(&bytes).unwrap();
        }
    }
    out.finish().unwrap().into_inner()
}

/// A POST answered with the raw body.
async fn export(c: &Client, body: &Value) -> (u16, Vec<u8>, String) {
    let resp = c
        .http
        .post(format!("{}{EXPORT}", c.base))
        .bearer_auth(c.token.as_deref().unwrap())
        .json(body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let kind = resp.headers().get("content-type").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
    (status, resp.bytes().await.unwrap().to_vec(), kind)
}

/// `diplomatie archive check` on a package: its success and what it said.
async fn check(server: &TestServer, package: &[u8], name: &str) -> (bool, String) {
    let file = server.data_dir.path().join(name);
    std::fs::write(&file, package).unwrap();
    let out = server.command(&["archive", "check", file.to_str().unwrap()]).await;
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

async fn login(server: &TestServer, user: &str) -> Client {
    server.login(user, "pw").await
}

async fn a_group_period_is_transferred_in_seda(backend: Backend) {
    let server = TestServer::start_with_organisation(backend, ORG, &[]).await;
    let root = login(&server, "root").await;
    let alice = login(&server, "alice").await;
    let bob = login(&server, "bob").await;
    let dir = tempfile::tempdir().unwrap();

    // A telegram with an attachment from paris, a letter to paris from dgm, a chat message.
    let pdf = b"%PDF-1.4 rapport".to_vec();
    let upload = format!("{}/_matrix/media/v3/upload?filename=rapport%20final.pdf", alice.base);
    let resp = alice
        .http
        .post(upload)
        .bearer_auth(alice.token.as_deref().unwrap())
        .header("content-type", "application/pdf")
        .body(pdf.clone())
        .send()
        .await
        .unwrap();
    let mxc = resp.json::<Value>().await.unwrap()["content_uri"].as_str().unwrap().to_owned();
    let path = "/_diplomatie/client/v1/correspondence";
    let telegram = json!({ "kind": "telegram", "from": "paris", "subject": "Gaz & électricité", "body": "Le texte.",
                           "action": ["dgm"], "information": ["cabinet"], "tags": ["energie"], "attachments": [mxc] });
    let sent = alice.ok(Method::POST, path, Some(&telegram)).await;
    let telegram_ref = sent["reference"].as_str().unwrap().to_owned();
    let letter = json!({ "kind": "formal_letter", "from": "dgm", "subject": "Réponse", "body": "Bien reçu.", "action": ["paris"] });
    let letter_ref = bob.ok(Method::POST, path, Some(&letter)).await["reference"].as_str().unwrap().to_owned();
    let general = alice.ok(Method::GET, "/_matrix/client/v3/directory/room/%23g.paris.general%3Alocalhost", None).await;
    alice.send_text(general["room_id"].as_str().unwrap(), "Réunion à 10 h").await;

    // Exported twice by the API, once by the command line: the same bytes.
    let period = json!({ "group": "paris", "from": "2000-01-01", "to": "2099-12-31" });
    let (status, package, kind) = export(&root, &period).await;
    assert_eq!((status, kind.as_str()), (200, "application/zip"), "{}", String::from_utf8_lossy(&package));
    assert_eq!(export(&root, &period).await.1, package);
    let out_file = dir.path().join("cli.zip");
    let out = server
        .command(&[
            "archive",
            "export",
            "--group",
            "paris",
            "--from",
            "2000-01-01",
            "--to",
            "2099-12-31",
            "-o",
            out_file.to_str().unwrap(),
        ])
        .await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read(&out_file).unwrap(), package);

    validate(dir.path(), &package);
    let (sound, said) = check(&server, &package, "group.zip").await;
    assert!(sound && said.contains("sound"), "{said}");

    // What it holds: both correspondences (sent and received), with records that verify
    // offline, texts and the attachment; the general room's messages.
    let listed = names(&package);
    for file in [
        format!("content/{telegram_ref}/record.json"),
        format!("content/{telegram_ref}/body.txt"),
        format!("content/{telegram_ref}/pieces-jointes/1-rapport_final.pdf"),
        format!("content/{letter_ref}/record.json"),
        "content/salons/paris-general.json".to_owned(),
        "content/salons/paris-correspondence.json".to_owned(),
    ] {
        assert!(listed.contains(&file), "{file} not in {listed:?}");
    }
    assert_eq!(entry(&package, &format!("content/{telegram_ref}/pieces-jointes/1-rapport_final.pdf")).unwrap(), pdf);
    let room = String::from_utf8(entry(&package, "content/salons/paris-general.json").unwrap()).unwrap();
    assert!(room.contains("Réunion à 10 h"), "{room}");
    let record = dir.path().join("record.json");
    std::fs::write(&record, entry(&package, &format!("content/{telegram_ref}/record.json")).unwrap()).unwrap();
    let out = server.command(&["verify", record.to_str().unwrap()]).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let manifest = String::from_utf8(entry(&package, "manifest.xml").unwrap()).unwrap();
    for part in [
        "<Title>Télégramme diplomatique ",
        " : Gaz &amp; électricité</Title>",
        "<KeywordContent>energie</KeywordContent>",
        "<Corpname>DGM</Corpname>",
        "<Role>Pour action</Role>",
        "<SigningRole>Signature</SigningRole>",
        "<Identifier>@alice:localhost</Identifier>",
        "<OriginatingAgencyIdentifier>paris</OriginatingAgencyIdentifier>",
    ] {
        assert!(manifest.contains(part), "{part} not in the manifest");
    }

    // A missing file, a changed file, an unlisted file: each caught, by the command and by the
    // administrators' endpoint.
    let body_txt = format!("content/{telegram_ref}/body.txt");
    let missing = rewrite(&package, |name, bytes| (name != body_txt).then_some(bytes));
    let (sound, said) = check(&server, &missing, "missing.zip").await;
    assert!(!sound && said.contains(&body_txt) && said.contains("missing"), "{said}");
    let changed = rewrite(&package, |name, bytes| Some(if name == body_txt { b"Le texte !".to_vec() } else { bytes }));
    let (sound, said) = check(&server, &changed, "changed.zip").await;
    assert!(!sound && said.contains("digest"), "{said}");
    let resp = root
        .http
        .post(format!("{}/_diplomatie/admin/v1/archive/check", root.base))
        .bearer_auth(root.token.as_deref().unwrap())
        .body(changed)
        .send()
        .await
        .unwrap();
    let report: Value = resp.json().await.unwrap();
    assert_eq!(report["valid"], false, "{report}");
    let sound_report = root
        .http
        .post(format!("{}/_diplomatie/admin/v1/archive/check", root.base))
        .bearer_auth(root.token.as_deref().unwrap())
        .body(package.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(sound_report.json::<Value>().await.unwrap()["valid"], true);

    // A period with nothing in it still makes a valid transfer (of an empty group).
    let (status, empty, _) =
        export(&root, &json!({ "group": "paris", "from": "2001-01-01", "to": "2001-01-31" })).await;
    assert_eq!(status, 200);
    assert_eq!(names(&empty), vec!["manifest.xml".to_owned()]);
    validate(dir.path(), &empty);

    // Refusals, with the spec's errors.
    assert_error(&alice.post(EXPORT, &period).await, 403, "M_FORBIDDEN");
    assert_error(
        &root.post(EXPORT, &json!({ "group": "atlantide", "from": "2000-01-01", "to": "2000-01-02" })).await,
        404,
        "M_NOT_FOUND",
    );
    assert_error(
        &root.post(EXPORT, &json!({ "group": "paris", "from": "hier", "to": "2000-01-02" })).await,
        400,
        "M_INVALID_PARAM",
    );
    assert_error(
        &root.post(EXPORT, &json!({ "group": "paris", "from": "2000-02-01", "to": "2000-01-02" })).await,
        400,
        "M_INVALID_PARAM",
    );
    assert_error(&root.post(EXPORT, &json!({ "group": "paris" })).await, 400, "M_MISSING_PARAM");
    assert_error(
        &root.post(EXPORT, &json!({ "cell": "!x:localhost", "group": "paris" })).await,
        400,
        "M_INVALID_PARAM",
    );
    assert_error(&root.raw(Method::POST, EXPORT, b"{".to_vec()).await, 400, "M_NOT_JSON");
}

async fn a_stood_down_cell_is_handed_to_archiving(backend: Backend) {
    let server = TestServer::start(backend, &[]).await;
    let root = server.admin().await;
    let coord = server.register("coord").await;
    let member = server.register("member").await;
    let crisis = "/_diplomatie/client/v1/crisis";
    let cell = coord.ok(Method::POST, crisis, Some(&json!({ "name": "Séisme", "members": [member.user_id] }))).await;
    let cell_id = cell["cell_id"].as_str().unwrap().to_owned();
    let decisions = cell["rooms"]["decisions"].as_str().unwrap().to_owned();
    coord.ok(Method::PUT, &format!("{crisis}/{cell_id}/sitrep"), Some(&json!({ "body": "Magnitude 5,2" }))).await;
    coord.send_text(&decisions, "Évacuation du quartier nord").await;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    while coord.ok(Method::GET, &format!("{crisis}/{cell_id}/log"), None).await["entries"]
        .as_array()
        .is_none_or(|e| e.is_empty())
    {
        assert!(tokio::time::Instant::now() < deadline, "the log entry was never sealed");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    // Active: not yet for the archives.
    assert_error(&root.post(EXPORT, &json!({ "cell": cell_id })).await, 403, "M_FORBIDDEN");
    coord.ok(Method::POST, &format!("{crisis}/{cell_id}/stand_down"), Some(&json!({}))).await;
    let info = coord.ok(Method::GET, &format!("{crisis}/{cell_id}"), None).await;
    assert_eq!(info["archive_status"], "exported", "{info}");

    // The package written at stand-down is the one exported on demand.
    let archives = server.data_dir.path().join("archives");
    let written: Vec<_> = std::fs::read_dir(&archives).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(written.len(), 1, "{written:?}");
    assert!(written[0].file_name().unwrap().to_str().unwrap().starts_with("cellule-seisme-"), "{written:?}");
    let package = std::fs::read(&written[0]).unwrap();
    let (status, exported, _) = export(&root, &json!({ "cell": cell_id })).await;
    assert_eq!(status, 200);
    assert_eq!(exported, package);

    let dir = tempfile::tempdir().unwrap();
    validate(dir.path(), &package);
    let (sound, said) = check(&server, &package, "cell.zip").await;
    assert!(sound, "{said}");
    let manifest = String::from_utf8(entry(&package, "manifest.xml").unwrap()).unwrap();
    for part in [
        "<Rule>P10Y</Rule>",
        "<FinalAction>Keep</FinalAction>",
        "<Role>Clôture de la main courante</Role>",
        "<Role>Entrée 1</Role>",
    ] {
        assert!(manifest.contains(part), "{part} not in the manifest");
    }
    let listed = names(&package);
    for file in [
        "content/cellule/main-courante.json",
        "content/cellule/points-de-situation.json",
        "content/salons/decisions.json",
        "content/salons/situation.json",
    ] {
        assert!(listed.iter().any(|n| n == file), "{file} not in {listed:?}");
    }
    let log = dir.path().join("log.json");
    std::fs::write(&log, entry(&package, "content/cellule/main-courante.json").unwrap()).unwrap();
    let out = server.command(&["verify", log.to_str().unwrap()]).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let sitreps = String::from_utf8(entry(&package, "content/cellule/points-de-situation.json").unwrap()).unwrap();
    assert!(sitreps.contains("Magnitude 5,2"), "{sitreps}");
}
