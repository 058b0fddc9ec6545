//! Statistics of repeated measurements: throughput is a ratio scale whose
//! noise on a shared machine is multiplicative, so samples are summarised on
//! the log scale: the geometric mean with a Student-t interval, and ratios of
//! paired samples (two variants measured in the same repetition) the same
//! way. With one sample there is no interval, and nothing is claimed.

use serde::{Deserialize, Serialize};
use statrs::distribution::{Beta, ContinuousCDF, StudentsT};

/// The confidence level of every interval vlab reports.
pub const CONFIDENCE: f64 = 0.95;

/// A 95 % confidence interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Interval {
    pub low: f64,
    pub high: f64,
}

impl Interval {
    /// Whether it holds `x`.
    pub fn contains(&self, x: f64) -> bool {
        self.low <= x && x <= self.high
    }
}

/// Repeated measurements of one quantity.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// The samples, in the order they were taken.
    pub samples: Vec<f64>,
    pub median: f64,
    pub min: f64,
    pub max: f64,
    /// The geometric mean.
    pub mean: f64,
    /// The geometric mean's 95 % interval (Student t on the logs); `None`
    /// with fewer than two samples.
    pub interval: Option<Interval>,
}

/// The median of `xs` (the mean of the middle two for an even count).
pub fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// The two-sided 95 % quantile of Student's t with `df` degrees of freedom.
fn t_quantile(df: f64) -> f64 {
    StudentsT::new(0.0, 1.0, df).expect("df > 0").inverse_cdf(1.0 - (1.0 - CONFIDENCE) / 2.0)
}

/// Mean and sample variance.
fn mean_var(xs: &[f64]) -> (f64, f64) {
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    let var = if xs.len() > 1 { xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0) } else { 0.0 };
    (mean, var)
}

/// Summarises positive samples (throughputs, ratios); `None` when there are
/// none or one is not positive.
pub fn summarize(samples: &[f64]) -> Option<Summary> {
    if samples.is_empty() || samples.iter().any(|x| !x.is_finite() || *x <= 0.0) {
        return None;
    }
    let logs: Vec<f64> = samples.iter().map(|x| x.ln()).collect();
    let (m, var) = mean_var(&logs);
    let interval = (samples.len() > 1).then(|| {
        let half = t_quantile(samples.len() as f64 - 1.0) * (var / samples.len() as f64).sqrt();
        Interval { low: (m - half).exp(), high: (m + half).exp() }
    });
    Some(Summary {
        samples: samples.to_vec(),
        median: median(samples),
        min: samples.iter().copied().fold(f64::INFINITY, f64::min),
        max: samples.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        mean: m.exp(),
        interval,
    })
}

/// The ratio of paired samples (`a[i]` and `b[i]` measured in the same
/// repetition): a summary of `a[i] / b[i]`.
pub fn paired_ratio(a: &[f64], b: &[f64]) -> Option<Summary> {
    if a.len() != b.len() {
        return None;
    }
    let ratios: Vec<f64> = a.iter().zip(b).map(|(x, y)| x / y).collect();
    summarize(&ratios)
}

/// The ratio of two independent sets of samples (`b` over `a`, say two
/// runs on two kernels): the ratio of their geometric means, with Welch's
/// interval on the logs; `None` without samples on either side, no
/// interval with fewer than two on either.
pub fn unpaired_ratio(a: &[f64], b: &[f64]) -> Option<(f64, Option<Interval>)> {
    let (sa, sb) = (summarize(a)?, summarize(b)?);
    let ratio = sb.mean / sa.mean;
    if a.len() < 2 || b.len() < 2 {
        return Some((ratio, None));
    }
    let la: Vec<f64> = a.iter().map(|x| x.ln()).collect();
    let lb: Vec<f64> = b.iter().map(|x| x.ln()).collect();
    let ((_, va), (_, vb)) = (mean_var(&la), mean_var(&lb));
    let (qa, qb) = (va / a.len() as f64, vb / b.len() as f64);
    let se = (qa + qb).sqrt();
    if se == 0.0 {
        return Some((ratio, Some(Interval { low: ratio, high: ratio })));
    }
    // Welch-Satterthwaite degrees of freedom.
    let df = (qa + qb).powi(2) / (qa.powi(2) / (a.len() as f64 - 1.0) + qb.powi(2) / (b.len() as f64 - 1.0));
    let half = t_quantile(df) * se;
    Some((ratio, Some(Interval { low: ratio * (-half).exp(), high: ratio * half.exp() })))
}

/// How often something happened: `k` times in `n` tries.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Proportion {
    pub k: u64,
    pub n: u64,
    /// `k / n` (0 when `n` is 0).
    pub rate: f64,
    /// Its 95 % interval (Clopper-Pearson, exact: it holds the true rate at
    /// least 95 % of the time, also when `k` is 0 or `n` small); `None`
    /// without tries.
    pub interval: Option<Interval>,
}

/// `k` events in `n` tries, with the exact binomial interval.
pub fn proportion(k: u64, n: u64) -> Proportion {
    let rate = if n == 0 { 0.0 } else { k as f64 / n as f64 };
    let interval = (n > 0 && k <= n).then(|| {
        let tail = (1.0 - CONFIDENCE) / 2.0;
        let (kf, nf) = (k as f64, n as f64);
        let low = if k == 0 { 0.0 } else { Beta::new(kf, nf - kf + 1.0).expect("shape > 0").inverse_cdf(tail) };
        let high = if k == n { 1.0 } else { Beta::new(kf + 1.0, nf - kf).expect("shape > 0").inverse_cdf(1.0 - tail) };
        Interval { low, high }
    });
    Proportion { k, n, rate, interval }
}

impl std::fmt::Display for Proportion {
    /// `1 of 200 (0.5 %, 95 % interval 0.01-2.8 %)`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let pct = |x: f64| {
            let p = x * 100.0;
            if p == 0.0 || p >= 10.0 {
                format!("{p:.0}")
            } else if p >= 1.0 {
                format!("{p:.1}")
            } else {
                format!("{p:.2}")
            }
        };
        write!(f, "{} of {} ({} %", self.k, self.n, pct(self.rate))?;
        if let Some(i) = self.interval {
            write!(f, ", 95 % interval {}-{} %", pct(i.low), pct(i.high))?;
        }
        write!(f, ")")
    }
}

/// What a ratio of B to A says, against a tolerance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Change {
    /// Significantly below 1 (the interval excludes 1) by more than the tolerance.
    Slower,
    /// Significantly above 1 by more than the tolerance.
    Faster,
    /// The interval holds 1, or the change is within the tolerance.
    NoSignificantChange,
    /// No interval (fewer than two samples on a side): nothing can be said.
    Inconclusive,
}

impl Change {
    /// The verdict in words.
    pub fn describe(self) -> &'static str {
        match self {
            Change::Slower => "slower",
            Change::Faster => "faster",
            Change::NoSignificantChange => "no significant change",
            Change::Inconclusive => "inconclusive (a side has one sample or none)",
        }
    }
}

/// Judges `ratio` (B over A) with its interval against `tolerance` (0.05:
/// changes within 5 % do not count).
pub fn judge(ratio: f64, interval: Option<Interval>, tolerance: f64) -> Change {
    let Some(i) = interval else { return Change::Inconclusive };
    if i.high < 1.0 && ratio < 1.0 - tolerance {
        Change::Slower
    } else if i.low > 1.0 && ratio > 1.0 + tolerance {
        Change::Faster
    } else {
        Change::NoSignificantChange
    }
}

/// An estimate of a ratio: its geometric mean and 95 % interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Estimate {
    pub mean: f64,
    pub interval: Option<Interval>,
    /// The degrees of freedom of the interval's t quantile.
    pub df: f64,
}

/// Paired ratios from several blocks (machines, each running its own rounds)
/// pooled. Ratios differ between machines more than between the rounds of
/// one, so the rounds of a block are not independent samples of the whole:
/// the log ratio of round i of block b is modelled as mu + u_b + e_bi, with
/// a block effect u_b ~ N(0, s_b^2) and a round effect e_bi ~ N(0, s_e^2)
/// (a one-way random-effects model).
///
/// - `mixed`: that model, its variance components estimated by the ANOVA
///   method (which is REML's for blocks of equal size, while positive). With
///   a between-block component, the blocks' means are weighted by
///   1 / (s_b^2 + s_e^2 / n_b) and the interval has B - 1 degrees of
///   freedom; where the blocks differ no more than their rounds do (the
///   component estimated at 0), every round is a sample of the same ratio
///   and the interval has N - 1.
/// - `block_means`: each block's geometric mean as one sample, a t interval
///   with B - 1 degrees of freedom: the model that assumes least.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Pooled {
    pub mixed: Estimate,
    pub block_means: Estimate,
    /// The estimated standard deviations of the block and the round effects
    /// (natural log scale; `within` is 0 when no block has two rounds).
    pub between_sd: f64,
    pub within_sd: f64,
    pub blocks: usize,
    pub rounds: usize,
}

fn t_interval(mean_log: f64, se: f64, df: f64) -> Option<Interval> {
    (df >= 1.0 && se.is_finite()).then(|| {
        let half = t_quantile(df) * se;
        Interval { low: (mean_log - half).exp(), high: (mean_log + half).exp() }
    })
}

/// Pools the paired ratios of each block (a block's rounds, each a ratio
/// taken within the round): `None` without a block or with a ratio that is
/// not positive.
pub fn pool_blocks(blocks: &[Vec<f64>]) -> Option<Pooled> {
    if blocks.is_empty() || blocks.iter().any(|b| b.is_empty() || b.iter().any(|x| !x.is_finite() || *x <= 0.0)) {
        return None;
    }
    let logs: Vec<Vec<f64>> = blocks.iter().map(|b| b.iter().map(|x| x.ln()).collect()).collect();
    let nb = logs.len() as f64;
    let sizes: Vec<f64> = logs.iter().map(|b| b.len() as f64).collect();
    let n: f64 = sizes.iter().sum();
    let means: Vec<f64> = logs.iter().map(|b| b.iter().sum::<f64>() / b.len() as f64).collect();
    let grand = logs.iter().flatten().sum::<f64>() / n;

    // Each block's mean as one sample.
    let (bm, bvar) = mean_var(&means);
    let block_means = Estimate { mean: bm.exp(), interval: t_interval(bm, (bvar / nb).sqrt(), nb - 1.0), df: nb - 1.0 };

    let ss_within: f64 = logs.iter().zip(&means).map(|(b, m)| b.iter().map(|x| (x - m).powi(2)).sum::<f64>()).sum();
    let ss_between: f64 = means.iter().zip(&sizes).map(|(m, k)| k * (m - grand).powi(2)).sum();
    let within_df = n - nb;
    let mixed = if within_df < 1.0 {
        // One round per block: the rounds cannot be told from the blocks.
        block_means
    } else if nb < 2.0 {
        let all = &logs[0];
        let (m, v) = mean_var(all);
        Estimate { mean: m.exp(), interval: t_interval(m, (v / n).sqrt(), n - 1.0), df: n - 1.0 }
    } else {
        let ms_within = ss_within / within_df;
        let ms_between = ss_between / (nb - 1.0);
        let n0 = (n - sizes.iter().map(|k| k * k).sum::<f64>() / n) / (nb - 1.0);
        let between = ((ms_between - ms_within) / n0).max(0.0);
        if between > 0.0 {
            let weights: Vec<f64> = sizes.iter().map(|k| 1.0 / (between + ms_within / k)).collect();
            let total: f64 = weights.iter().sum();
            let m = weights.iter().zip(&means).map(|(w, x)| w * x).sum::<f64>() / total;
            Estimate { mean: m.exp(), interval: t_interval(m, (1.0 / total).sqrt(), nb - 1.0), df: nb - 1.0 }
        } else {
            let var = (ss_within + ss_between) / (n - 1.0);
            Estimate { mean: grand.exp(), interval: t_interval(grand, (var / n).sqrt(), n - 1.0), df: n - 1.0 }
        }
    };
    let within_sd = if within_df >= 1.0 { (ss_within / within_df).sqrt() } else { 0.0 };
    let between_sd = if nb >= 2.0 && within_df >= 1.0 {
        let n0 = (n - sizes.iter().map(|k| k * k).sum::<f64>() / n) / (nb - 1.0);
        ((ss_between / (nb - 1.0) - within_sd.powi(2)) / n0).max(0.0).sqrt()
    } else if nb >= 2.0 {
        bvar.sqrt()
    } else {
        0.0
    };
    Some(Pooled { mixed, block_means, between_sd, within_sd, blocks: logs.len(), rounds: n as usize })
}

impl Pooled {
    /// About how many blocks like these (as many rounds each, on average)
    /// the mixed model would need for its interval to leave `bound` out, at
    /// the spread observed: `None` when the estimate is on the bound or
    /// more than 1000 would be needed, `Some(blocks)` (never fewer than
    /// now plus one) otherwise.
    pub fn blocks_to_decide(&self, bound: f64) -> Option<usize> {
        let gap = (self.mixed.mean.ln() - bound.ln()).abs();
        if gap == 0.0 || !gap.is_finite() {
            return None;
        }
        let per_block = self.rounds as f64 / self.blocks as f64;
        // The variance of one block's mean log ratio.
        let v1 = self.between_sd.powi(2) + self.within_sd.powi(2) / per_block;
        if v1 == 0.0 {
            return Some(self.blocks + 1);
        }
        (self.blocks + 1..=1000).find(|&b| {
            let df = if self.between_sd > 0.0 { b as f64 - 1.0 } else { b as f64 * per_block - 1.0 };
            t_quantile(df) * (v1 / b as f64).sqrt() < gap
        })
    }
}
