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

/// How many values are known exactly without buckets: from the count, the sum, the minimum
/// and the maximum (the middle one of three is the sum less the other two). The many states
/// of a large graph that run once or twice cost no histogram each.
const FEW: u64 = 3;

/// A distribution of durations, in microseconds (40 bytes until it needs buckets).
#[derive(Default)]
pub(crate) struct Durations {
    count: u64,
    /// (In microseconds, a u64 overflows after 500 000 years of summed durations: saturates.)
    sum: u64,
    min: u64,
    max: u64,
    /// Counts by bucket once there are more than `FEW` values (a power of two of them, grown
    /// as larger values come).
    buckets: Option<Box<[u32]>>,
}

/// Counts `micros` in `buckets`, growing them to its bucket.
fn count_in(buckets: &mut Option<Box<[u32]>>, micros: u64) {
    let index = bucket(micros);
    if buckets.as_ref().is_none_or(|counts| index >= counts.len()) {
        grow(buckets, index);
    }
    if let Some(counts) = buckets {
        counts[index] = counts[index].saturating_add(1);
    }
}

/// Makes room in `buckets` up to bucket `index`: to the next power of two, so that values
/// growing one bucket at a time reallocate only a logarithmic number of times.
#[cold]
fn grow(buckets: &mut Option<Box<[u32]>>, index: usize) {
    let len = (index + 1).next_power_of_two().max(64);
    let mut grown = vec![0u32; len].into_boxed_slice();
    if let Some(old) = buckets.take() {
        grown[..old.len()].copy_from_slice(&old);
    }
    *buckets = Some(grown);
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

    /// The values, smallest first, while there are at most `FEW` (`None` after).
    fn exact(&self) -> Option<([u64; FEW as usize], usize)> {
        let middle = || {
            // (Clamped: a saturated sum cannot put it outside the other two.)
            (self.sum.saturating_sub(self.min).saturating_sub(self.max)).clamp(self.min, self.max)
        };
        Some(match self.count {
            0 => ([0; 3], 0),
            1 => ([self.min, 0, 0], 1),
            2 => ([self.min, self.max, 0], 2),
            3 => ([self.min, middle(), self.max], 3),
            _ => return None,
        })
    }

    /// Puts the values known exactly into buckets (there are no more than `FEW`).
    fn move_into_buckets(&mut self) {
        if let Some((values, count)) = self.exact() {
            for &value in &values[..count] {
                count_in(&mut self.buckets, value);
            }
        }
    }

    fn record_micros(&mut self, micros: u64) {
        if self.count == FEW {
            self.move_into_buckets();
        }
        if self.count == 0 {
            self.min = micros;
            self.max = micros;
        } else {
            self.min = self.min.min(micros);
            self.max = self.max.max(micros);
        }
        self.count += 1;
        self.sum = self.sum.saturating_add(micros);
        if self.count > FEW {
            count_in(&mut self.buckets, micros);
        }
    }

    /// All the values of `parts` in one.
    pub(crate) fn merged<'a>(parts: impl IntoIterator<Item = &'a Durations>) -> Self {
        let mut all = Self::new();
        for part in parts {
            if let Some((values, count)) = part.exact() {
                for &micros in &values[..count] {
                    all.record_micros(micros);
                }
                continue;
            }
            let Some(theirs) = &part.buckets else {
                continue; // (more than `FEW` values always have buckets)
            };
            // Into buckets first, then add.
            if all.count <= FEW {
                all.move_into_buckets();
            }
            if all
                .buckets
                .as_ref()
                .is_none_or(|mine| mine.len() < theirs.len())
            {
                grow(&mut all.buckets, theirs.len() - 1);
            }
            if let Some(mine) = &mut all.buckets {
                for (mine, theirs) in mine.iter_mut().zip(theirs.iter()) {
                    *mine = mine.saturating_add(*theirs);
                }
            }
            if all.count == 0 {
                (all.min, all.max) = (part.min, part.max);
            }
            all.min = all.min.min(part.min);
            all.max = all.max.max(part.max);
            all.count += part.count;
            all.sum = all.sum.saturating_add(part.sum);
        }
        all
    }

    /// The value at each quantile (nearest rank), within the buckets' precision and never
    /// outside `[min, max]`.
    fn quantiles<const N: usize>(&self, quantiles: [f64; N]) -> [u64; N] {
        let ranks = quantiles.map(|q| ((q * self.count as f64).ceil() as u64).clamp(1, self.count));
        if let Some((sorted, _)) = self.exact() {
            return ranks.map(|rank| sorted[rank as usize - 1]);
        }
        let Some(buckets) = &self.buckets else {
            return [self.max; N]; // (more than `FEW` values always have buckets)
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
    fn up_to_three_values_are_exact_and_the_fourth_keeps_them_all() {
        let ms = |micros: u64| micros as f64 / 1000.0;
        let mut durations = Durations::new();
        for (value, count) in [(7_000u64, 1u64), (3_000, 2), (5_000, 3)] {
            durations.record_micros(value);
            assert!(
                durations.buckets.is_none(),
                "{count} values need no buckets"
            );
            assert_eq!(durations.summary().unwrap().count, count);
        }
        let summary = durations.summary().unwrap();
        assert_eq!(
            (summary.min_ms, summary.p50_ms, summary.max_ms),
            (3.0, 5.0, 7.0)
        );
        // The fourth value moves the three into buckets: the median of 3, 5, 7 and 9 ms is
        // still 5 ms (within 1%), and merging two such keeps all eight.
        durations.record_micros(9_000);
        assert!(durations.buckets.is_some());
        let summary = durations.summary().unwrap();
        assert_eq!(
            (summary.count, summary.min_ms, summary.max_ms),
            (4, 3.0, 9.0)
        );
        assert!(summary.p50_ms >= 5.0 && summary.p50_ms <= 5.0 * 1.01);
        let mut one = Durations::new();
        one.record_micros(1_000);
        let all = Durations::merged([&one, &durations, &durations]);
        let summary = all.summary().unwrap();
        assert_eq!(
            (summary.count, summary.min_ms, summary.max_ms),
            (9, 1.0, 9.0)
        );
        assert!((summary.mean_ms - ms(1_000 + 2 * 24_000) / 9.0).abs() < 1e-9);
        // Ranks: 1, 3, 3, 5, 5, ... the 5th of 9 is 5 ms.
        assert!(summary.p50_ms >= 5.0 && summary.p50_ms <= 5.0 * 1.01);
    }

    #[test]
    fn buckets_grow_to_far_larger_values() {
        let mut durations = Durations::new();
        for micros in [1, 2, 3, 4, 1_000_000_000, u64::MAX] {
            durations.record_micros(micros);
        }
        let summary = durations.summary().unwrap();
        assert_eq!(summary.count, 6);
        assert_eq!(summary.max_ms, u64::MAX as f64 / 1000.0);
        assert!(summary.p50_ms <= 0.003, "{}", summary.p50_ms);
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
