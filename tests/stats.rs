//! The statistics of repeated measurements: known samples give known
//! medians and intervals, and ratios are judged as regressions, gains or
//! noise only when their interval says so.

use vlab::stats::{judge, median, paired_ratio, summarize, unpaired_ratio, Change};

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-4 * b.abs().max(1.0)
}

#[test]
fn medians() {
    assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
    assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
    assert_eq!(median(&[7.0]), 7.0);
}

/// 1, 2, 4: the logs are 0, ln 2, 2 ln 2; their mean ln 2 (geometric mean
/// 2), their standard deviation ln 2; t(0.975, 2) = 4.302653, so the interval
/// is exp(ln 2 +- 4.302653 ln 2 / sqrt 3) = [0.357455, 11.190290].
#[test]
fn a_summary_has_the_geometric_mean_and_a_t_interval_on_the_logs() {
    let s = summarize(&[1.0, 2.0, 4.0]).unwrap();
    assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 4.0));
    assert!(close(s.mean, 2.0), "{s:?}");
    let i = s.interval.unwrap();
    assert!(close(i.low, 0.357455) && close(i.high, 11.190290), "{i:?}");
}

#[test]
fn one_sample_has_no_interval_and_nonpositive_samples_no_summary() {
    assert!(summarize(&[5.0]).unwrap().interval.is_none());
    assert!(summarize(&[]).is_none());
    assert!(summarize(&[1.0, 0.0]).is_none());
    assert!(summarize(&[1.0, f64::NAN]).is_none());
}

#[test]
fn paired_ratios_take_each_repetition_alone() {
    // Both halve from one repetition to the next: the ratio is always 2.
    let r = paired_ratio(&[2.0, 4.0, 8.0], &[1.0, 2.0, 4.0]).unwrap();
    assert!(close(r.mean, 2.0));
    let i = r.interval.unwrap();
    assert!(close(i.low, 2.0) && close(i.high, 2.0), "{i:?}");
    assert!(paired_ratio(&[1.0], &[1.0, 2.0]).is_none(), "unpaired lengths");
}

#[test]
fn a_clear_regression_a_clear_gain_and_noise() {
    let a = [100.0, 110.0, 90.0, 105.0];
    // B at half of A: slower.
    let b: Vec<f64> = a.iter().map(|x| x / 2.0).collect();
    let (ratio, interval) = unpaired_ratio(&a, &b).unwrap();
    assert!(close(ratio, 0.5), "{ratio}");
    assert!(interval.unwrap().contains(0.5) && interval.unwrap().high < 0.95, "{interval:?}");
    assert_eq!(judge(ratio, interval, 0.05), Change::Slower);
    // B at 1.5 times A, with its own noise: faster.
    let b = [150.0, 160.0, 140.0, 162.0];
    let (ratio, interval) = unpaired_ratio(&a, &b).unwrap();
    assert_eq!(judge(ratio, interval, 0.05), Change::Faster, "{ratio} {interval:?}");
    // B scattered around A: the interval holds 1.
    let b = [95.0, 120.0, 85.0, 104.0];
    let (ratio, interval) = unpaired_ratio(&a, &b).unwrap();
    assert!(interval.unwrap().contains(1.0), "{interval:?}");
    assert_eq!(judge(ratio, interval, 0.05), Change::NoSignificantChange);
    // A significant change smaller than the tolerance does not count (paired:
    // each repetition of B 2 % below its A).
    let b: Vec<f64> = a.iter().map(|x| x * 0.98).collect();
    let r = paired_ratio(&b, &a).unwrap();
    assert!(r.interval.unwrap().high < 1.0, "{r:?}");
    assert_eq!(judge(r.mean, r.interval, 0.05), Change::NoSignificantChange);
    assert_eq!(judge(r.mean, r.interval, 0.01), Change::Slower);
    // One sample on a side: nothing can be said.
    let (ratio, interval) = unpaired_ratio(&a, &[50.0]).unwrap();
    assert_eq!(judge(ratio, interval, 0.05), Change::Inconclusive);
}

/// Rates of rare events (a boot fault in a soak) get the exact binomial
/// interval: it is not empty when nothing happened, and holds the textbook
/// values.
#[test]
fn proportions_have_clopper_pearson_intervals() {
    use vlab::stats::proportion;
    let none = proportion(0, 200);
    let i = none.interval.unwrap();
    assert_eq!((none.rate, i.low), (0.0, 0.0));
    assert!(close(i.high, 1.0 - 0.025f64.powf(1.0 / 200.0)), "{i:?}");
    let one = proportion(1, 200).interval.unwrap();
    assert!((one.low - 0.000127).abs() < 2e-6 && (one.high - 0.02755).abs() < 2e-5, "{one:?}");
    let five = proportion(5, 100).interval.unwrap();
    assert!((five.low - 0.01643).abs() < 2e-5 && (five.high - 0.11284).abs() < 2e-5, "{five:?}");
    let all = proportion(3, 3).interval.unwrap();
    assert_eq!(all.high, 1.0);
    assert!(close(all.low, 0.025f64.powf(1.0 / 3.0)), "{all:?}");
    assert_eq!(proportion(0, 0).interval, None);
    assert_eq!(proportion(1, 200).to_string(), "1 of 200 (0.50 %, 95 % interval 0.01-2.8 %)");
}

/// An interval holds its bounds and what lies between them, and nothing
/// beyond either.
#[test]
fn an_interval_holds_only_what_lies_between_its_bounds() {
    let i = vlab::stats::Interval { low: 0.8, high: 1.2 };
    for x in [0.8, 1.0, 1.2] {
        assert!(i.contains(x), "{x}");
    }
    for x in [0.79, 1.21, f64::NAN] {
        assert!(!i.contains(x), "{x}");
    }
}

/// Samples spread over orders of magnitude: the interval of an unpaired
/// ratio follows the variance of the logs divided by the sample counts
/// (Welch), here wider than a factor of a million either way.
#[test]
fn an_unpaired_interval_follows_the_variance_of_the_logs() {
    let a = [1.0, 1e3, 1e6];
    let (ratio, interval) = unpaired_ratio(&a, &a).unwrap();
    assert!(close(ratio, 1.0), "{ratio}");
    // ln spacing 6.91: variance 47.7, standard error sqrt(2 * 47.7 / 3) =
    // 5.64, 4 degrees of freedom (t = 2.776): half-width 15.7 on the logs.
    let i = interval.unwrap();
    assert!((i.high.ln() - 15.66).abs() < 0.01 && (i.low.ln() + 15.66).abs() < 0.01, "{i:?}");
}
