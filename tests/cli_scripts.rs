//! The CLI in scripts (issue 11): exit codes a script can branch on, messages that say
//! what to type, completions and man pages, `SWARMCACHE_*` variables and the config file.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::harness::{ServerProc, TrackerProc, bin, random_file, run, run_cmd};

/// `name args…` in `dir` with a config home of its own (so no user file is read) and
/// the given variables.
fn run_env(dir: &Path, name: &str, args: &[&str], env: &[(&str, &str)]) -> crate::harness::Run {
    let mut cmd = Command::new(bin(name));
    cmd.args(args)
        .current_dir(dir)
        .env("XDG_CONFIG_HOME", dir.join("config"));
    for (k, v) in env {
        cmd.env(k, v);
    }
    run_cmd(&mut cmd, &format!("{env:?} {name} {}", args.join(" ")), b"")
}

#[test]
fn addresses_and_urls_are_usage_errors_with_the_fix_in_the_message() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let id = "ab".repeat(32);
    let no_scheme = run(
        d,
        "peer_client",
        &["get", &id, "--tracker", "127.0.0.1:7070"],
        b"",
    );
    assert!(
        no_scheme.code(2).contains("http://127.0.0.1:7070"),
        "{}",
        no_scheme.stderr
    );
    for (program, flag) in [
        ("tracker", "--listen"),
        ("peer_server", "--listen"),
        ("peer_server", "--metrics"),
    ] {
        let no_port = run(d, program, &[flag, "127.0.0.1"], b"");
        assert!(no_port.code(2).contains("add :PORT"), "{}", no_port.stderr);
    }
    let bad_id = run(
        d,
        "peer_client",
        &["cache", "rm", "xyz", "--store", "s"],
        b"",
    );
    assert!(
        bad_id.code(2).contains("not an asset id"),
        "{}",
        bad_id.stderr
    );
    // A host name resolves wherever an address is taken.
    let mut tracker =
        crate::harness::Proc::spawn(d, "tracker", &["--listen", "localhost:0", "--data", "td"]);
    let url = tracker.listening();
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
}

#[test]
fn scripts_can_tell_tracker_source_and_disk_failures_apart() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    random_file(&d.join("f.bin"), 70_000, 5);
    let tracker = TrackerProc::start(d, &[]);
    let peer = ServerProc::start(d, "peer", None, &[], &[]);
    let id = crate::harness::publish(d, &tracker.url, "f.bin");
    // A peer port is not a tracker, and says so (not "Header field didn't end with \n").
    let wrong = run(
        d,
        "peer_client",
        &[
            "get",
            &id,
            "--tracker",
            &format!("http://{}", peer.addr),
            "--store",
            "s",
            "-o",
            "x",
        ],
        b"",
    );
    let stderr = wrong.code(3);
    assert!(stderr.contains("is not a swarmcache tracker"), "{stderr}");
    assert!(!stderr.contains("Header field"), "{stderr}");
    // Published, but nobody holds it: no source could deliver.
    let nobody = run(
        d,
        "peer_client",
        &[
            "get",
            &id,
            "--tracker",
            &tracker.url,
            "--store",
            "s",
            "-o",
            "x",
        ],
        b"",
    );
    nobody.code(4);
    // A full disk (stdout onto a "full" device, which keeps nothing) is a local failure.
    // The test makes its own device node (as /dev/full is: char 1 7), never the machine's.
    let full = d.join("full");
    let made = Command::new("mknod")
        .arg(&full)
        .args(["c", "1", "7"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if made {
        let mut cmd = Command::new(bin("chunkify"));
        cmd.arg("f.bin")
            .current_dir(d)
            .stdout(std::fs::OpenOptions::new().write(true).open(&full).unwrap());
        let out = cmd.stderr(Stdio::piped()).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(5),
            "chunkify > full device: {stderr}"
        );
        assert!(stderr.contains("disk is full"), "{stderr}");
    } else {
        eprintln!("skipped the full-disk case: mknod needs root");
    }
    // The empty output of a failed producer is refused, not chunked or published.
    let empty = run(d, "chunkify", &["-"], b"");
    assert!(
        empty.code(1).contains("standard input is empty"),
        "{}",
        empty.stderr
    );
    let empty = run(
        d,
        "peer_client",
        &["publish", "--tracker", &tracker.url, "-"],
        b"",
    );
    assert!(
        empty.code(1).contains("standard input is empty"),
        "{}",
        empty.stderr
    );
}

#[test]
fn a_stream_whose_reader_quits_exits_23_and_a_terminal_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    random_file(&d.join("f.bin"), 4 << 20, 6);
    let tracker = TrackerProc::start(d, &[]);
    let origin = ServerProc::start(
        d,
        "origin",
        Some(&tracker.url),
        &["f.bin"],
        &["--origin", "--max-upload-rate", "2MiB"],
    );
    let id = &origin.seeded[0];
    let mut child = Command::new(bin("peer_client"))
        .args([
            "get",
            id,
            "--tracker",
            &tracker.url,
            "--store",
            "s",
            "-o",
            "-",
        ])
        .current_dir(d)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 1];
    child.stdout.take().unwrap().read_exact(&mut first).unwrap();
    // The pipe's reader is gone: the rest of the stream cannot be delivered.
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(23),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let Ok(script) = which("script") else {
        eprintln!("skipped: no `script` (util-linux) to give the stream a terminal");
        return;
    };
    let log = d.join("typescript");
    let line = format!(
        "{} get {id} --tracker {} --store s --stream",
        bin("peer_client").display(),
        tracker.url
    );
    let tty = run_cmd(
        Command::new(script)
            .args(["-q", "-e", "-c", &line])
            .arg(&log)
            .current_dir(d),
        &format!("script -c {line:?}"),
        b"",
    );
    tty.code(1);
    let seen = std::fs::read_to_string(&log).unwrap_or_default() + &tty.stdout;
    assert!(seen.contains("would write binary to a terminal"), "{seen}");
}

fn which(name: &str) -> Result<std::path::PathBuf, ()> {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .ok_or(())
}

#[test]
fn every_binary_has_completions_a_man_page_and_versions_on_subcommands() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for (program, flag) in [
        ("chunkify", "--chunk-size"),
        ("tracker", "--peer-timeout"),
        ("peer_server", "--advertise-addr"),
        ("peer_client", "--max-download-rate"),
    ] {
        let bash = run(d, program, &["--completions", "bash"], b"");
        let script = bash.ok();
        assert!(
            script.contains(&format!("_{program}()")),
            "{program}: {script}"
        );
        assert!(script.contains(flag), "{program} completions lack {flag}");
        let man = run(d, program, &["--man"], b"");
        let page = man.ok();
        assert!(
            page.contains(&format!(".TH {program} 1")),
            "{program}: {page}"
        );
        assert!(
            page.contains(".SH NAME") && page.contains(".SH OPTIONS"),
            "{page}"
        );
        if let Ok(man) = which("man") {
            let path = d.join(format!("{program}.1"));
            std::fs::write(&path, page).unwrap();
            let rendered = run_cmd(
                Command::new(man)
                    .arg("-l")
                    .arg(&path)
                    .env("MANPAGER", "cat"),
                &format!("man -l {}", path.display()),
                b"",
            );
            let text = rendered.ok();
            assert!(text.contains("OPTIONS") && text.contains(program), "{text}");
        }
        let help = run(d, program, &["--help"], b"");
        assert!(
            help.ok().contains("23   the reader of --stream"),
            "{program} --help"
        );
        assert!(!run(d, program, &["-h"], b"").ok().contains("--completions"));
    }
    let version = run(d, "peer_client", &["get", "--version"], b"");
    assert!(
        version.ok().contains(env!("CARGO_PKG_VERSION")),
        "{}",
        version.stdout
    );
    let version = run(d, "tracker", &["token", "--version"], b"");
    assert!(version.ok().contains(env!("CARGO_PKG_VERSION")));
}

#[test]
fn a_flag_beats_its_variable_which_beats_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("config/swarmcache")).unwrap();
    let file = d.join("config/swarmcache/config.toml");
    std::fs::write(
        &file,
        "# where the tracker runs\ntracker = \"http://127.0.0.1:1\"\nstore = \"from-file\"\n",
    )
    .unwrap();
    let id = "ab".repeat(32);
    let get = ["get", id.as_str(), "-o", "x"];
    let from_file = run_env(d, "peer_client", &get, &[]);
    assert!(
        from_file.code(3).contains("http://127.0.0.1:1 "),
        "{}",
        from_file.stderr
    );
    assert!(d.join("from-file").is_dir(), "the file's store is used");
    let from_env = run_env(
        d,
        "peer_client",
        &get,
        &[("SWARMCACHE_TRACKER", "http://127.0.0.1:2")],
    );
    assert!(
        from_env.code(3).contains("http://127.0.0.1:2 "),
        "{}",
        from_env.stderr
    );
    let mut flagged = get.to_vec();
    flagged.extend(["--tracker", "http://127.0.0.1:3"]);
    let from_flag = run_env(
        d,
        "peer_client",
        &flagged,
        &[("SWARMCACHE_TRACKER", "http://127.0.0.1:2")],
    );
    assert!(
        from_flag.code(3).contains("http://127.0.0.1:3 "),
        "{}",
        from_flag.stderr
    );
    // A flag no one gave a variable by hand has one too, checked like the flag.
    let env_chunk = run_env(d, "chunkify", &["x"], &[("SWARMCACHE_CHUNK_SIZE", "1KiB")]);
    assert!(env_chunk.code(2).contains("1KiB"), "{}", env_chunk.stderr);
    // A switch takes what shells write.
    std::fs::write(d.join("f.bin"), b"some bytes").unwrap();
    let id_only = run_env(d, "chunkify", &["f.bin"], &[("SWARMCACHE_ID", "1")]);
    assert_eq!(id_only.ok().trim().len(), 64, "{}", id_only.stdout);
    // A bad file names itself and the line.
    std::fs::write(
        &file,
        "tracker = \"http://127.0.0.1:1\"\nmax_upload_rate = \"fast\"\n",
    )
    .unwrap();
    let bad = run_env(d, "peer_client", &get, &[]);
    let stderr = bad.code(2);
    assert!(stderr.contains(&file.display().to_string()), "{stderr}");
    assert!(stderr.contains("line 2"), "{stderr}");
}

#[test]
fn the_shipped_systemd_units_parse() {
    let Ok(analyze) = which("systemd-analyze") else {
        eprintln!("skipped: no systemd-analyze to verify contrib/systemd/ with");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let units = Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/systemd");
    // (shipped file, binary its ExecStart runs, the instance name verified)
    for (file, binary, instance) in [
        (
            "swarmcache-tracker.service",
            "tracker",
            "swarmcache-tracker.service",
        ),
        (
            "swarmcache-peer-server@.service",
            "peer_server",
            "swarmcache-peer-server@root.service",
        ),
    ] {
        let text = std::fs::read_to_string(units.join(file)).unwrap();
        let installed = format!("/usr/local/bin/{binary} ");
        assert!(text.contains(&installed), "{file} runs {installed}");
        // Verified from a temporary copy whose ExecStart names this build's binary, so
        // nothing under /etc or /usr is read for it or written.
        let local = text.replace(&installed, &format!("{} ", bin(binary).display()));
        std::fs::write(d.join(file), &local).unwrap();
        std::fs::write(d.join(instance), &local).unwrap();
        let verify = run_cmd(
            Command::new(&analyze)
                .args(["verify", "--man=no"])
                .arg(d.join(instance))
                .current_dir(d),
            &format!("systemd-analyze verify {instance}"),
            b"",
        );
        assert!(
            !verify.stderr.contains(file) && !verify.stderr.contains(instance),
            "{instance}: {}",
            verify.stderr
        );
        verify.ok();
    }
}
