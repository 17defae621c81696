//! The operator's recipes in `config/`: the systemd unit passes `systemd-analyze verify`, and
//! the command lines of the unit and of the container image start a server that answers
//! `/health` and stops cleanly on SIGTERM (what systemd and a container engine send).

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use diplomatie_tests::binary;

fn repo_file(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(name)
}

/// The values of a key in an INI-like file (`Key=value` lines).
fn values<'a>(text: &'a str, key: &str) -> Vec<&'a str> {
    text.lines().filter_map(|l| l.strip_prefix(key)?.strip_prefix('=')).collect()
}

/// Runs `args` with `env` (the listener moved to a free loopback port), waits for `/health`,
/// sends SIGTERM and checks the server exits with success in time.
fn serves_and_stops(args: &[String], env: &[(String, String)]) {
    let mut cmd = Command::new(binary());
    cmd.args(args)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("DIPLOMATIE_LISTEN", "127.0.0.1:0")
        .env("DIPLOMATIE_LOG", "warn,diplomatie::listening=info")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    let mut child = cmd.spawn().expect("start diplomatie");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let addr = loop {
        let line = lines.next().expect("the server stopped before listening").unwrap();
        if line.contains("Diplomatie is listening") {
            let addr = line.split_whitespace().find_map(|w| w.strip_prefix("addr=")).unwrap().to_owned();
            break addr;
        }
    };
    std::thread::spawn(move || lines.for_each(drop));
    let out = Command::new("curl")
        .args(["-fsS", "--retry", "20", "--retry-connrefused", "--retry-delay", "1"])
        .arg(format!("http://{addr}/health"))
        .output()
        .expect("curl");
    assert!(out.status.success(), "/health: {}", String::from_utf8_lossy(&out.stderr));
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the server did not stop within the unit's TimeoutStopSec");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "the server stopped with {status}");
}

#[test]
fn the_systemd_unit_verifies_and_its_command_serves() {
    let unit = std::fs::read_to_string(repo_file("config/diplomatie.service")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let bin = binary();
    // The unit as installed, but for where the binary is.
    let local = unit.replace("/usr/local/bin/diplomatie", bin.to_str().unwrap());
    let path = dir.path().join("diplomatie.service");
    std::fs::write(&path, &local).unwrap();
    let verify = Command::new("systemd-analyze").arg("verify").arg(&path).output().expect("systemd-analyze");
    assert!(
        verify.status.success() && verify.stderr.is_empty(),
        "systemd-analyze verify: {}",
        String::from_utf8_lossy(&verify.stderr)
    );

    // Its command line, with the example configuration and its own data directory.
    let exec = values(&unit, "ExecStart");
    assert_eq!(exec.len(), 1, "{exec:?}");
    let mut words = exec[0].split_whitespace();
    assert_eq!(words.next(), Some("/usr/local/bin/diplomatie"));
    let config = dir.path().join("diplomatie.toml");
    std::fs::copy(repo_file("config/diplomatie.example.toml"), &config).unwrap();
    let args: Vec<String> = words
        .map(|w| if w == "/etc/diplomatie/diplomatie.toml" { config.to_str().unwrap().to_owned() } else { w.into() })
        .collect();
    assert!(args.contains(&config.to_str().unwrap().to_owned()), "the unit reads /etc/diplomatie: {args:?}");
    let data = dir.path().join("state");
    std::fs::create_dir(&data).unwrap();
    let mut env = Vec::new();
    for assignment in values(&unit, "Environment") {
        let (k, v) = assignment.split_once('=').unwrap();
        let v = if v == "/var/lib/diplomatie" { data.to_str().unwrap() } else { v };
        env.push((k.to_owned(), v.to_owned()));
    }
    assert!(env.iter().any(|(k, _)| k == "DIPLOMATIE_DATA_DIR"), "the data in the StateDirectory: {env:?}");
    serves_and_stops(&args, &env);
    assert!(std::fs::read_dir(&data).unwrap().next().is_some(), "the data went to the state directory");
}

#[test]
fn the_container_command_serves_on_its_defaults() {
    let recipe = std::fs::read_to_string(repo_file("config/Containerfile")).unwrap();
    // ENTRYPOINT ["/usr/local/bin/diplomatie"] and CMD ["serve"]: the arguments are CMD's.
    let cmd: Vec<&str> = recipe.lines().filter_map(|l| l.strip_prefix("CMD ")).collect();
    assert_eq!(cmd, [r#"["serve"]"#]);
    assert!(recipe.contains("DIPLOMATIE_DATA_DIR=/data"));
    assert!(recipe.contains("http://127.0.0.1:8008/health"), "the health check asks /health");
    let dir = tempfile::tempdir().unwrap();
    let env = [("DIPLOMATIE_DATA_DIR".to_owned(), dir.path().to_str().unwrap().to_owned())];
    serves_and_stops(&["serve".to_owned()], &env);
}
