//! The monitor's distributions of durations: a log-linear histogram of microseconds with 128
//! buckets per power of two above 256 µs (and one per microsecond below), so every percentile
//! is within 1% of the exact value (at most 1/128 above it), in a few kilobytes per state at
//! most. Recording is a leading-zero count, a shift and an add: it runs for every attempt of
//! every watched state, on the run's coordinator, so it has to be cheap (an HDR histogram's
//! record cost twice as much here). Min, max and mean are kept exactly.

use std::time::Duration;

use super::snapshot::Summary;

/// Buckets per power of two above `LINEAR`: precision 1/`SUB_BUCKETS`.
const SUB_BUCKETS: u64 = 128;
/// Values below this each have a bucket of their own.
const LINEAR: u64 = 2 * SUB_BUCKETS;

/// How many values are kept as they are before the bucket counts are allocated: the many
/// states of a large graph that run once or twice cost no histogram each.
const FEW: usize = 4;

/// A distribution of durations, in microseconds (72 bytes until it needs buckets).
#[derive(Default)]
pub(crate) struct Durations {
    count: u64,
    /// (In microseconds, a u64 overflows after 500 000 years of summed durations: saturates.)
    sum: u64,
    min: u64,
    max: u64,
    values: Values,
}

/// The values, as they are while there are at most `FEW`, then as bucket counts.
enum Values {
    Few([u64; FEW]),
    Buckets(Vec<u32>),
}

impl Default for Values {
    fn default() -> Self {
        Self::Few([0; FEW])
    }
}

/// Counts `micros` in `buckets`, growing them to its bucket.
fn count_in(buckets: &mut Vec<u32>, micros: u64) {
    let index = bucket(micros);
    if index >= buckets.len() {
        buckets.resize(index + 1, 0);
    }
    buckets[index] = buckets[index].saturating_add(1);
}

/// The bucket of `micros`.
fn bucket(micros: u64) -> usize {
    if micros < LINEAR {
        return micros as usize;
    }
    // The top bit's position is at least 8 here: keep the 8 bits from it down.
    let shift = 63 - micros.leading_zeros() as u64 - 7;
    (shift * SUB_BUCKETS + (micros >> shift)) as usize
}

/// The largest value that falls in bucket `index`.
fn highest_in(index: usize) -> u64 {
    let index = index as u64;
    if index < LINEAR {
        return index;
    }
    let shift = index / SUB_BUCKETS - 1;
    let mantissa = index - shift * SUB_BUCKETS;
    // (In 128 bits: the top bucket ends at u64::MAX exactly.)
    let end = (u128::from(mantissa) + 1) << shift;
    u64::try_from(end - 1).unwrap_or(u64::MAX)
}

impl Durations {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    pub(crate) fn record(&mut self, duration: Duration) {
        // (Without `as_micros`: its 128-bit division costs more than the rest together.)
        let micros = duration
            .as_secs()
            .saturating_mul(1_000_000)
            .saturating_add(u64::from(duration.subsec_micros()));
        self.record_micros(micros);
    }

    fn record_micros(&mut self, micros: u64) {
        if self.count == 0 {
            self.min = micros;
            self.max = micros;
        } else {
            self.min = self.min.min(micros);
            self.max = self.max.max(micros);
        }
        let index = self.count as usize;
        self.count += 1;
        self.sum = self.sum.saturating_add(micros);
        match &mut self.values {
            Values::Few(few) if index < FEW => few[index] = micros,
            Values::Few(few) => {
                let mut buckets = Vec::new();
                for &value in few.iter().chain([&micros]) {
                    count_in(&mut buckets, value);
                }
                self.values = Values::Buckets(buckets);
            }
            Values::Buckets(buckets) => count_in(buckets, micros),
        }
    }

    /// All the values of `parts` in one.
    pub(crate) fn merged<'a>(parts: impl IntoIterator<Item = &'a Durations>) -> Self {
        let mut all = Self::new();
        for part in parts {
            match &part.values {
                Values::Few(few) => {
                    for &micros in &few[..part.count as usize] {
                        all.record_micros(micros);
                    }
                }
                Values::Buckets(theirs) => {
                    // Into buckets first, then add.
                    if let Values::Few(few) = &all.values {
                        let mut buckets = Vec::new();
                        for &value in &few[..all.count as usize] {
                            count_in(&mut buckets, value);
                        }
                        all.values = Values::Buckets(buckets);
                    }
                    let Values::Buckets(mine) = &mut all.values else {
                        continue; // (just made buckets)
                    };
                    if mine.len() < theirs.len() {
                        mine.resize(theirs.len(), 0);
                    }
                    for (mine, theirs) in mine.iter_mut().zip(theirs) {
                        *mine = mine.saturating_add(*theirs);
                    }
                    if all.count == 0 {
                        (all.min, all.max) = (part.min, part.max);
                    }
                    all.min = all.min.min(part.min);
                    all.max = all.max.max(part.max);
                    all.count += part.count;
                    all.sum = all.sum.saturating_add(part.sum);
                }
            }
        }
        all
    }

    /// The value at each quantile (nearest rank), within the buckets' precision and never
    /// outside `[min, max]`.
    fn quantiles<const N: usize>(&self, quantiles: [f64; N]) -> [u64; N] {
        let ranks = quantiles.map(|q| ((q * self.count as f64).ceil() as u64).clamp(1, self.count));
        let buckets = match &self.values {
            Values::Few(few) => {
                let mut sorted = few[..self.count as usize].to_vec();
                sorted.sort_unstable();
                return ranks.map(|rank| sorted[rank as usize - 1]);
            }
            Values::Buckets(buckets) => buckets,
        };
        let mut values = [self.max; N];
        let mut seen = 0u64;
        let mut next = 0;
        for (index, &count) in buckets.iter().enumerate() {
            seen += u64::from(count);
            while next < N && seen >= ranks[next] {
                values[next] = highest_in(index).clamp(self.min, self.max);
                next += 1;
            }
            if next == N {
                break;
            }
        }
        values
    }

    pub(crate) fn summary(&self) -> Option<Summary> {
        if self.count == 0 {
            return None;
        }
        let ms = |micros: u64| micros as f64 / 1000.0;
        let [p50, p95, p99] = self.quantiles([0.5, 0.95, 0.99]);
        Some(Summary {
            count: self.count,
            min_ms: ms(self.min),
            mean_ms: self.sum as f64 / self.count as f64 / 1000.0,
            p50_ms: ms(p50),
            p95_ms: ms(p95),
            p99_ms: ms(p99),
            max_ms: ms(self.max),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_contiguous_and_each_within_one_percent() {
        let mut previous = 0;
        for micros in (0..100_000u64).chain([u32::MAX as u64, u64::MAX / 3, u64::MAX]) {
            let index = bucket(micros);
            assert!(index >= previous, "{micros}");
            previous = index;
            let highest = highest_in(index);
            assert!(highest >= micros, "{micros} in a bucket up to {highest}");
            assert!(
                (highest - micros) as f64 <= micros as f64 / 128.0,
                "{micros} reported as {highest}"
            );
        }
        // Every bucket up to there was reached by some value, in order.
        assert_eq!(bucket(99_999), bucket(highest_in(bucket(99_999))));
    }

    #[test]
    fn percentiles_of_a_thousand_values_match_the_exact_ones_within_one_percent() {
        let mut durations = Durations::new();
        // 1 ms, 2 ms, ... 1000 ms, shuffled by a fixed stride.
        for i in 0..1000u64 {
            let ms = (i * 389) % 1000 + 1;
            durations.record(Duration::from_millis(ms));
        }
        let summary = durations.summary().unwrap();
        assert_eq!(summary.count, 1000);
        assert_eq!((summary.min_ms, summary.max_ms), (1.0, 1000.0));
        assert!((summary.mean_ms - 500.5).abs() < 1e-9);
        for (actual, exact) in [
            (summary.p50_ms, 500.0),
            (summary.p95_ms, 950.0),
            (summary.p99_ms, 990.0),
        ] {
            assert!(
                actual >= exact && actual <= exact * 1.01,
                "{actual} for {exact}"
            );
        }
    }

    #[test]
    fn a_few_values_are_exact_and_merging_keeps_every_value() {
        let mut few = Durations::new();
        for ms in [3, 1, 2] {
            few.record(Duration::from_millis(ms));
        }
        let summary = few.summary().unwrap();
        assert_eq!(
            (
                summary.min_ms,
                summary.p50_ms,
                summary.p99_ms,
                summary.max_ms
            ),
            (1.0, 2.0, 3.0, 3.0)
        );
        let mut many = Durations::new();
        for ms in 10..=20 {
            many.record(Duration::from_millis(ms));
        }
        let all = Durations::merged([&few, &many, &Durations::new()]);
        let summary = all.summary().unwrap();
        assert_eq!(summary.count, 14);
        assert_eq!((summary.min_ms, summary.max_ms), (1.0, 20.0));
        assert!((summary.mean_ms - (6.0 + 165.0) / 14.0).abs() < 1e-9);
        // The 7th of 14 values is 13 ms.
        assert!(summary.p50_ms >= 13.0 && summary.p50_ms <= 13.0 * 1.01);
    }
}
