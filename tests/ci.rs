//! The GitHub Actions workflow runs every test exactly once: its unit job
//! and its VM test shards (nextest's counted partitions), read from
//! `.github/workflows/ci.yml` with their matrices expanded, are listed by
//! nextest itself and together match the whole suite, none twice. And
//! nothing the project installs is given a set-id mode or file capabilities.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use yaml_rust2::{Yaml, YamlLoader};

fn workflow() -> Yaml {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(".github/workflows/ci.yml");
    let text = std::fs::read_to_string(&path).unwrap();
    YamlLoader::load_from_str(&text).unwrap().remove(0)
}

/// Every `cargo nextest run` of the workflow as its arguments, one per job
/// and matrix combination: `(job[matrix], arguments after "run")`.
fn nextest_runs(workflow: &Yaml) -> Vec<(String, Vec<String>)> {
    let mut runs = Vec::new();
    for (job_name, job) in workflow["jobs"].as_hash().unwrap() {
        let job_name = job_name.as_str().unwrap();
        for combination in matrix(&job["strategy"]["matrix"]) {
            for step in job["steps"].as_vec().unwrap() {
                let Some(script) = step["run"].as_str() else { continue };
                let script = substitute_matrix(script, &combination);
                let env: BTreeMap<String, String> = step["env"]
                    .as_hash()
                    .into_iter()
                    .flatten()
                    .map(|(k, v)| (k.as_str().unwrap().to_string(), substitute_matrix(&yaml_text(v), &combination)))
                    .collect();
                let script = script.replace("\\\n", " ");
                for line in script.lines() {
                    let words = shlex::split(&substitute_env(line, &env)).unwrap();
                    let Some(at) = words.windows(3).position(|w| w == ["cargo", "nextest", "run"]) else { continue };
                    assert!(
                        !combination.values().any(|v| v.starts_with("${{")),
                        "{job_name}: a job whose matrix is computed runs nextest; this test cannot count its runs"
                    );
                    runs.push((format!("{job_name}{combination:?}"), words[at + 3..].to_vec()));
                }
            }
        }
    }
    runs
}

/// The combinations of a job's matrix (one empty combination without one).
fn matrix(m: &Yaml) -> Vec<BTreeMap<String, String>> {
    let mut all = vec![BTreeMap::new()];
    for (key, values) in m.as_hash().into_iter().flatten() {
        let key = key.as_str().unwrap();
        // A matrix computed by an expression (the study's blocks) is one
        // combination here, the expression itself.
        let computed = [values.clone()];
        let values = match values {
            Yaml::String(e) if e.starts_with("${{") => &computed[..],
            _ => values.as_vec().unwrap_or_else(|| panic!("matrix.{key}: a list")),
        };
        all = all
            .into_iter()
            .flat_map(|c| {
                values.iter().map(move |v| {
                    let mut c = c.clone();
                    c.insert(key.to_string(), yaml_text(v));
                    c
                })
            })
            .collect();
    }
    all
}

fn yaml_text(v: &Yaml) -> String {
    match v {
        Yaml::String(s) => s.clone(),
        Yaml::Integer(i) => i.to_string(),
        Yaml::Boolean(b) => b.to_string(),
        other => panic!("unexpected value {other:?}"),
    }
}

fn substitute_matrix(text: &str, combination: &BTreeMap<String, String>) -> String {
    combination.iter().fold(text.to_string(), |t, (k, v)| t.replace(&format!("${{{{ matrix.{k} }}}}"), v))
}

fn substitute_env(line: &str, env: &BTreeMap<String, String>) -> String {
    env.iter().fold(line.to_string(), |t, (k, v)| t.replace(&format!("${{{k}}}"), v).replace(&format!("${k}"), v))
}

/// The tests nextest would run with these `cargo nextest run` arguments
/// (the selecting ones: filters and partitions), as `binary test` names.
fn listed(run_args: &[String]) -> Vec<String> {
    let mut args = vec!["nextest".to_string(), "list".to_string(), "--message-format".to_string(), "json".to_string()];
    let mut words = run_args.iter();
    while let Some(w) = words.next() {
        match w.as_str() {
            "-E" | "--filterset" | "--partition" => {
                args.push(w.clone());
                args.push(words.next().unwrap().clone());
            }
            "--workspace" | "--all" => args.push(w.clone()),
            // Options that only change how tests run.
            "--profile" | "-P" => {
                words.next();
            }
            "--no-fail-fast" => {}
            other => panic!("cargo nextest run {other}: this test does not know whether it selects tests"),
        }
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let out = Command::new(cargo).args(&args).current_dir(env!("CARGO_MANIFEST_DIR")).output().unwrap();
    assert!(out.status.success(), "cargo {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut tests = Vec::new();
    for (binary, suite) in list["rust-suites"].as_object().unwrap() {
        for (name, case) in suite["testcases"].as_object().unwrap() {
            if case["filter-match"]["status"] == "matches" {
                tests.push(format!("{binary} {name}"));
            }
        }
    }
    tests
}

#[test]
fn the_workflows_jobs_run_every_test_exactly_once() {
    let runs = nextest_runs(&workflow());
    let shards: Vec<_> = runs.iter().filter(|(_, a)| a.iter().any(|w| w == "--partition")).collect();
    assert!(shards.len() >= 2, "the VM tests are sharded: {runs:?}");
    let everything = listed(&[]);
    assert!(everything.iter().any(|t| t.starts_with("vlab::vm ")), "the VM tests are listed: {everything:?}");
    let mut runs_of: BTreeMap<&str, Vec<&str>> = everything.iter().map(|t| (t.as_str(), Vec::new())).collect();
    let selected: Vec<(String, Vec<String>)> = runs.iter().map(|(job, args)| (job.clone(), listed(args))).collect();
    for (job, tests) in &selected {
        assert!(!tests.is_empty(), "{job} runs no test");
        for t in tests {
            runs_of.get_mut(t.as_str()).unwrap_or_else(|| panic!("{job} runs {t}, which the suite lacks")).push(job);
        }
    }
    let wrong: Vec<_> = runs_of.iter().filter(|(_, jobs)| jobs.len() != 1).collect();
    assert!(wrong.is_empty(), "tests not run exactly once (test: jobs): {wrong:#?}");
}

/// The workflow and the action pin every third-party action to a commit.
#[test]
fn third_party_actions_are_pinned_to_commits() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for file in [".github/workflows/ci.yml", "action.yml"] {
        let text = std::fs::read_to_string(root.join(file)).unwrap();
        for line in text.lines().map(str::trim).filter(|l| l.starts_with("uses:") || l.starts_with("- uses:")) {
            let target = line.split("uses:").nth(1).unwrap().split_whitespace().next().unwrap();
            if target.starts_with("./") {
                continue;
            }
            let (_, rev) = target.split_once('@').unwrap_or_else(|| panic!("{file}: {line}: no ref"));
            assert!(rev.len() == 40 && rev.chars().all(|c| c.is_ascii_hexdigit()), "{file}: {line}: not a commit");
        }
    }
}

/// Whether a shell line gives a file a set-user/group-id mode or file
/// capabilities, in any of its commands.
fn grants_privileges(line: &str) -> bool {
    let words: Vec<&str> =
        line.split(|c: char| c.is_whitespace() || ";&|".contains(c)).filter(|w| !w.is_empty()).collect();
    let set_id = |mode: &str| match mode.parse::<u32>() {
        // A numeric mode of four octal digits: the first holds setuid (4) and setgid (2).
        Ok(_) if mode.len() == 4 => u32::from(mode.as_bytes()[0] - b'0') & 6 != 0,
        Ok(_) => false,
        Err(_) => mode.contains(['+', '=']) && mode.split(',').any(|m| m.contains('s')),
    };
    words.contains(&"setcap")
        || words
            .iter()
            .enumerate()
            .filter(|(_, w)| **w == "chmod")
            .any(|(i, _)| words[i + 1..].iter().find(|w| !w.starts_with('-')).is_some_and(|mode| set_id(mode)))
}

/// vlab runs as the calling user: its setup, CI scripts, workflows and
/// action install no setuid or setgid program and no file capability (the
/// only set-id programs a run without root uses are the distribution's
/// newuidmap and newgidmap, for image builds).
#[test]
fn nothing_installed_is_given_set_id_modes_or_capabilities() {
    for bad in [
        "chmod u+s /usr/local/bin/vlab",
        "sudo chmod 4755 vlab",
        "chmod 3755 x",
        "chmod g=rxs x",
        "chmod 0755 a; chmod -R u+s b",
        "setcap cap_net_admin+ep vlab",
    ] {
        assert!(grants_privileges(bad), "{bad}");
    }
    for fine in ["chmod g+rw /dev/kvm", "chmod 0666 /dev/net/tun", "chmod 0755 x", "chmod +x ci/run", "chmod -R a+rX d"]
    {
        assert!(!grants_privileges(fine), "{fine}");
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files: Vec<_> = [".ci", "ci", ".github/workflows"]
        .iter()
        .flat_map(|d| std::fs::read_dir(root.join(d)).unwrap().flatten().map(|e| e.path()))
        .collect();
    files.push(root.join("action.yml"));
    files.retain(|f| f.extension().is_none_or(|e| e != "cjs"));
    assert!(files.iter().any(|f| f.ends_with("ci/setup")), "{files:?}");
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for (n, line) in text.lines().enumerate() {
            assert!(!grants_privileges(line), "{}:{}: {line}", file.display(), n + 1);
        }
    }
}
