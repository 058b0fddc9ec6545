//! Several guest scripts in one agent call. Under TCG every `guest-exec`
//! costs a round trip and a shell start, and every process the guest starts
//! costs 5-15 ms; a case phase reads a dozen small things on each VM, so they
//! go in one script per VM. Each part runs in a subshell of its own; its
//! stdout and stderr are framed by markers that carry a token drawn for the
//! batch (so that no output can fake one) and its exit code, printed by
//! shell builtins only: a part costs nothing beyond its own commands.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;

use super::{last_lines, Guest};
use crate::qemu::agent::Output;

/// What a part of a batch must do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Must {
    /// Its output is wanted whatever its exit code.
    Report,
    /// Exit 0 (run with `set -ex`); if it fails, the parts after it do not run
    /// and the batch fails with its trace.
    Succeed,
}

/// An ordered set of named scripts for one guest.
#[derive(Debug, Clone)]
pub struct Batch {
    parts: Vec<(String, String, Must)>,
    token: String,
}

impl Default for Batch {
    fn default() -> Batch {
        Batch { parts: Vec::new(), token: format!("@@vlab-{}", super::random_hex()) }
    }
}

/// What each part of a batch printed, by name.
#[derive(Debug, Default)]
pub struct BatchOutput {
    parts: BTreeMap<String, Output>,
    seconds: BTreeMap<String, f64>,
}

impl BatchOutput {
    /// A part's output (absent when the batch had no such part).
    pub fn get(&self, name: &str) -> Option<&Output> {
        self.parts.get(name)
    }

    /// A part's stdout as text ("" when absent).
    pub fn text(&self, name: &str) -> String {
        self.get(name).map(Output::stdout_text).unwrap_or_default()
    }

    /// How long a part ran, by the guest's clock (10 ms steps); 0 when absent.
    pub fn seconds(&self, name: &str) -> f64 {
        self.seconds.get(name).copied().unwrap_or(0.0)
    }
}

impl Batch {
    /// An empty batch.
    pub fn new() -> Batch {
        Batch::default()
    }

    /// A part whose output is read whatever its exit code.
    pub fn report(&mut self, name: impl Into<String>, script: impl Into<String>) -> &mut Batch {
        self.parts.push((name.into(), script.into(), Must::Report));
        self
    }

    /// A part that must exit 0 (`set -ex`, traced); later parts run only if it does.
    pub fn succeed(&mut self, name: impl Into<String>, script: impl Into<String>) -> &mut Batch {
        self.parts.push((name.into(), script.into(), Must::Succeed));
        self
    }

    /// The guest shell script: part `i` is framed on stdout by `TOKEN i` and
    /// `\nTOKEN i CODE START END` (the guest's uptime around it), on stderr by
    /// `TOKEN i` and `\nTOKEN i`; a part that had to succeed and did not ends
    /// the script. Both streams end with a line `TOKEN end`, written last: the
    /// guest agent can lose what a command writes just before it exits (it
    /// stops reading a pipe on a hang-up that the kernel may report before
    /// the last bytes), and then it is this line that goes missing, and
    /// [`parse`](Self::parse) knows that the stream was cut.
    pub fn script(&self) -> String {
        let t = &self.token;
        let end = format!("printf '%s\\n' '{t} end'; printf '%s\\n' '{t} end' >&2");
        let mut s = String::new();
        for (i, (_, script, must)) in self.parts.iter().enumerate() {
            let set = if *must == Must::Succeed { "set -ex\n" } else { "" };
            s.push_str(&format!(
                "printf '%s\\n' '{t} {i}'; printf '%s\\n' '{t} {i}' >&2; read -r t0 _ </proc/uptime\n\
                 (\n{set}{script}\n) </dev/null\nc=$?; read -r t1 _ </proc/uptime\n\
                 printf '\\n%s %s %s %s\\n' '{t} {i}' $c $t0 $t1; printf '\\n%s\\n' '{t} {i}' >&2\n"
            ));
            if *must == Must::Succeed {
                s.push_str(&format!("[ $c = 0 ] || {{ {end}; exit 0; }}\n"));
            }
        }
        s.push_str(&end);
        s.push('\n');
        s
    }

    /// Splits the script's output back into the parts' outputs.
    pub fn parse(&self, out: &Output) -> anyhow::Result<BatchOutput> {
        let mut parts = BTreeMap::new();
        let mut seconds = BTreeMap::new();
        for (i, (name, _, _)) in self.parts.iter().enumerate() {
            let mark = format!("{} {i}", self.token);
            let Some((stdout, tail)) =
                framed(&out.stdout, &mark).with_context(|| match ends(&out.stdout, &self.token) {
                    true => "stdout came back whole".to_string(),
                    false => format!("stdout was cut short (its last line `{} end` is missing)", self.token),
                })?
            else {
                break;
            };
            let (stderr, _) = match framed(&out.stderr, &mark) {
                Ok(part) => part.unwrap_or_default(),
                // The agent lost the stream's last bytes: the part's stderr
                // is what came, and its code is known from stdout.
                Err(_) if !ends(&out.stderr, &self.token) => {
                    let open = format!("{mark}\n");
                    let start = find(&out.stderr, open.as_bytes(), 0).map_or(0, |s| s + open.len());
                    tracing::debug!("batch part `{name}`: stderr cut short by the guest agent");
                    (out.stderr[start..].to_vec(), String::new())
                }
                Err(e) => return Err(e),
            };
            let fields: Vec<&str> = tail.split_whitespace().collect();
            let code = fields
                .first()
                .and_then(|c| c.parse().ok())
                .with_context(|| format!("batch part `{name}` has no exit code"))?;
            if let [_, t0, t1] = fields[..] {
                if let (Ok(t0), Ok(t1)) = (t0.parse::<f64>(), t1.parse::<f64>()) {
                    tracing::debug!("batch part `{name}`: {:.2} s in the guest", t1 - t0);
                    seconds.insert(name.clone(), t1 - t0);
                }
            }
            parts.insert(name.clone(), Output { code, stdout, stderr });
        }
        Ok(BatchOutput { parts, seconds })
    }
    /// The first part that had to succeed and did not.
    fn failure<'a>(&'a self, out: &'a BatchOutput) -> Option<(&'a str, &'a Output)> {
        self.parts
            .iter()
            .filter(|(_, _, must)| *must == Must::Succeed)
            .find_map(|(name, _, _)| out.get(name).filter(|o| !o.success()).map(|o| (name.as_str(), o)))
    }
}

/// What lies between `MARK\n` and `\nMARK` in `stream`, and the rest of the
/// closing line; `None` when the part never started.
fn framed(stream: &[u8], mark: &str) -> anyhow::Result<Option<(Vec<u8>, String)>> {
    let open = format!("{mark}\n");
    let Some(start) = find(stream, open.as_bytes(), 0) else { return Ok(None) };
    let body = start + open.len();
    let close = format!("\n{mark}");
    let end = find(stream, close.as_bytes(), body).with_context(|| format!("batch part `{mark}` has no end"))?;
    let tail_start = end + close.len();
    let line_end = find(stream, b"\n", tail_start).unwrap_or(stream.len());
    let tail = String::from_utf8_lossy(&stream[tail_start..line_end]).into_owned();
    Ok(Some((stream[body..end].to_vec(), tail)))
}

/// Whether `stream` ends with the script's last line (`TOKEN end`).
fn ends(stream: &[u8], token: &str) -> bool {
    stream.ends_with(format!("{token} end\n").as_bytes())
}

fn find(haystack: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    haystack.get(from..)?.windows(needle.len()).position(|w| w == needle).map(|p| p + from)
}

/// A batch whose output came back without the frames its script prints: the
/// guest shell ran (its exit code is known) but what the agent captured is
/// not what the script wrote. Both streams' tails are kept for the report.
#[derive(Debug, thiserror::Error)]
#[error("on `{vm}`: unreadable batch output (exit {code}): {reason}\n--- stdout (last lines):\n{stdout}\n--- stderr (last lines):\n{stderr}")]
pub struct Unreadable {
    pub vm: String,
    pub code: i64,
    pub reason: String,
    pub stdout: String,
    pub stderr: String,
}

impl Guest {
    /// [`batch`](Self::batch) for a batch that changes nothing in the guest
    /// (it reads counters, runs probes): when its output comes back
    /// unreadable, it runs once more, with a notice.
    pub async fn reread_batch(&self, batch: &Batch) -> anyhow::Result<BatchOutput> {
        match self.batch(batch).await {
            Err(e) if e.is::<Unreadable>() => {
                tracing::warn!("{e:#}; running the batch once more");
                self.batch(batch).await
            }
            other => other,
        }
    }

    /// Runs a batch in one agent call; fails like [`Guest::run`] when a part
    /// that had to succeed did not.
    pub async fn batch(&self, batch: &Batch) -> anyhow::Result<BatchOutput> {
        self.batch_for(batch, Duration::ZERO).await
    }

    /// [`batch`](Self::batch) for a batch that runs a workload of `expected`
    /// (it may take that much longer): its status is first asked after it,
    /// so that the agent does not wake the guest while it measures.
    pub async fn batch_for(&self, batch: &Batch, expected: Duration) -> anyhow::Result<BatchOutput> {
        self.batch_for_at_most(batch, expected, Duration::ZERO).await
    }

    /// [`batch_for`](Self::batch_for) for a batch that may run up to
    /// `more` beyond `expected` (its limit grows by as much; its results
    /// are still read from `expected` on).
    pub async fn batch_for_at_most(
        &self,
        batch: &Batch,
        expected: Duration,
        more: Duration,
    ) -> anyhow::Result<BatchOutput> {
        let started = std::time::Instant::now();
        let out = self
            .agent()
            .sh_for(&batch.script(), expected, self.command_timeout() + expected + more)
            .await
            .with_context(|| format!("on `{}`", self.name))?;
        let parsed = batch.parse(&out).map_err(|e| Unreadable {
            vm: self.name.clone(),
            code: out.code,
            reason: format!("{e:#}"),
            stdout: last_lines(&out.stdout_text(), 20),
            stderr: last_lines(&out.stderr_text(), 20),
        })?;
        tracing::debug!(
            "batch on `{}`: {:.2} s on the host, its parts {:.2} s in the guest",
            self.name,
            started.elapsed().as_secs_f64(),
            parsed.seconds.values().sum::<f64>()
        );
        if let Some((name, o)) = batch.failure(&parsed) {
            let stderr = last_lines(&o.stderr_text(), 40);
            return Err(super::CommandFailed::new(&self.name, Some(name.to_string()), o.code, stderr).into());
        }
        Ok(parsed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The script runs in a real shell here, as in the guest.
    fn run_here(batch: &Batch) -> BatchOutput {
        let out = std::process::Command::new("/bin/sh").arg("-c").arg(batch.script()).output().unwrap();
        let code = out.status.code().unwrap().into();
        batch.parse(&Output { code, stdout: out.stdout, stderr: out.stderr }).unwrap()
    }

    #[test]
    fn parts_keep_their_bytes_streams_and_codes() {
        let mut b = Batch::new();
        b.report("a", "printf 'x\\n\\n'; echo err >&2; exit 3");
        b.report("binary", "printf '\\000\\377@@vlab-0000000000000000 1 0\\n'");
        b.succeed("ok", "true");
        let out = run_here(&b);
        assert_eq!(out.get("a").unwrap().stdout, b"x\n\n");
        assert_eq!(out.get("a").unwrap().stderr, b"err\n");
        assert_eq!(out.get("a").unwrap().code, 3);
        assert_eq!(out.get("binary").unwrap().stdout, b"\0\xff@@vlab-0000000000000000 1 0\n");
        assert!(b.failure(&out).is_none());
    }

    #[test]
    fn stdout_that_lost_a_parts_end_is_unreadable() {
        let mut b = Batch::new();
        b.report("counters", "echo 7");
        b.report("probes", "echo a connected");
        let out = std::process::Command::new("/bin/sh").arg("-c").arg(b.script()).output().unwrap();
        let end = format!("\n{} 1 ", b.token);
        let cut = out.stdout.windows(end.len()).position(|w| w == end.as_bytes()).unwrap();
        let lost = Output { code: 0, stdout: out.stdout[..cut].to_vec(), stderr: out.stderr.clone() };
        let e = b.parse(&lost).unwrap_err();
        assert!(format!("{e:#}").contains("has no end"), "{e:#}");
        assert!(format!("{e:#}").contains("stdout was cut short"), "{e:#}");
        let whole = Output { code: 0, stdout: out.stdout, stderr: out.stderr };
        assert_eq!(b.parse(&whole).unwrap().text("probes"), "a connected\n");
    }

    /// Runs `batch` here and cuts `cut` bytes off the end of its stderr.
    fn cut_stderr(batch: &Batch, cut: usize) -> Output {
        let out = std::process::Command::new("/bin/sh").arg("-c").arg(batch.script()).output().unwrap();
        let stderr = out.stderr[..out.stderr.len() - cut].to_vec();
        Output { code: 0, stdout: out.stdout, stderr }
    }

    #[test]
    fn stderr_that_lost_its_last_bytes_keeps_what_came() {
        let mut b = Batch::new();
        b.report("rules", "echo rules; echo warning >&2");
        b.report("ruleset", "echo ruleset; echo listed >&2");
        let end = format!("\n{} 1\n{} end\n", b.token, b.token);
        let out = b.parse(&cut_stderr(&b, end.len())).unwrap();
        assert_eq!(out.get("ruleset").unwrap().stderr, b"listed\n");
        assert_eq!(out.get("rules").unwrap().stderr, b"warning\n");
        assert_eq!(out.text("ruleset"), "ruleset\n");
        // Only the end line lost: every frame is whole.
        let out = b.parse(&cut_stderr(&b, format!("{} end\n", b.token).len())).unwrap();
        assert_eq!(out.get("ruleset").unwrap().stderr, b"listed\n");
    }

    #[test]
    fn a_frame_missing_from_a_whole_stream_is_unreadable() {
        let mut b = Batch::new();
        b.report("rules", "echo rules");
        let out = std::process::Command::new("/bin/sh").arg("-c").arg(b.script()).output().unwrap();
        let close = format!("\n{} 0\n", b.token);
        let stderr = String::from_utf8(out.stderr).unwrap().replace(&close, "\n");
        let e = b.parse(&Output { code: 0, stdout: out.stdout, stderr: stderr.into_bytes() }).unwrap_err();
        assert!(format!("{e:#}").contains("has no end"), "{e:#}");
    }

    #[test]
    fn a_failing_required_part_stops_the_rest() {
        let mut b = Batch::new();
        b.succeed("setup", "true\nfalse\necho never");
        b.report("after", "echo after");
        let out = run_here(&b);
        let (name, o) = b.failure(&out).unwrap();
        assert_eq!(name, "setup");
        assert!(o.stderr_text().contains("+ false"), "{}", o.stderr_text());
        assert!(out.get("after").is_none());
    }
}
