//! "Did you mean": the known name nearest to a mistyped one, for the
//! messages that refuse an unknown key, table or variant.

/// The candidate nearest to `word` by edit distance (a swap of two letters
/// counts as one edit, and case does not count), when it is near enough to
/// be a typo of it (at most a third of its letters, at least one) and no
/// other candidate is as near. Words of one or two letters get no guess.
pub(crate) fn nearest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let typed = word;
    if typed.chars().count() < 3 {
        return None;
    }
    let word = word.to_ascii_lowercase();
    let limit = (word.chars().count() / 3).max(1);
    let mut best: Option<(usize, &str)> = None;
    let mut tied = false;
    for c in candidates {
        let d = strsim::damerau_levenshtein(&word, &c.to_ascii_lowercase());
        match best {
            Some((b, _)) if d > b => {}
            Some((b, other)) if d == b => tied |= other != c,
            _ => {
                best = Some((d, c));
                tied = false;
            }
        }
    }
    match best {
        Some((d, c)) if d <= limit && !tied && c != typed => Some(c),
        _ => None,
    }
}

/// `; did you mean `NAME`?` for the nearest of `candidates`, or nothing.
pub(crate) fn did_you_mean<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> String {
    nearest(word, candidates).map(|n| format!("; did you mean `{n}`?")).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::nearest;

    #[test]
    fn typos_find_their_name() {
        let top = ["name", "vm", "workload", "matrix", "capture", "overlay"];
        assert_eq!(nearest("vmm", top), Some("vm"));
        assert_eq!(nearest("vms", top), Some("vm"));
        assert_eq!(nearest("workloads", top), Some("workload"));
        assert_eq!(nearest("Matrix", top), Some("matrix"));
        assert_eq!(nearest("vxaln", ["baseline", "vxlan", "vxlan-evpn", "ila"]), Some("vxlan"));
        assert_eq!(nearest("captures", top), Some("capture"));
    }

    #[test]
    fn no_guess_when_far_or_tied() {
        assert_eq!(nearest("threads", ["server", "client", "streams", "port"]), None, "too far");
        assert_eq!(nearest("host3", ["host1", "host2"]), None, "two as near");
        assert_eq!(nearest("vm", ["vm", "name"]), None, "a known name is no typo");
        assert_eq!(nearest("xyz", Vec::<&str>::new()), None);
        assert_eq!(nearest("c9", ["c2"]), None, "too short to guess");
    }
}
