//! Fixed-seed reservoir sampling: a uniform sample of at most `capacity` items of a stream of
//! unknown length, the same items for the same stream and seed (algorithm R with xorshift64*).

/// A uniform, reproducible sample of at most `capacity` items of a stream.
#[derive(Clone, Debug)]
pub struct Reservoir<T> {
    capacity: usize,
    items: Vec<T>,
    seen: u64,
    state: u64,
}

impl<T> Reservoir<T> {
    /// An empty sample of at most `capacity` items, drawn with `seed`.
    pub fn new(capacity: usize, seed: u64) -> Self {
        Self {
            capacity,
            items: Vec::new(),
            seen: 0,
            // xorshift needs a non-zero state.
            state: seed | 1,
        }
    }

    fn next(&mut self) -> u64 {
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        self.state.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Offers the next item of the stream; `make` is only called when the item is kept.
    pub fn offer_with(&mut self, make: impl FnOnce() -> T) {
        self.seen += 1;
        if self.items.len() < self.capacity {
            self.items.push(make());
            return;
        }
        let j = self.next() % self.seen;
        if (j as usize) < self.capacity {
            self.items[j as usize] = make();
        }
    }

    /// Offers the next item of the stream.
    pub fn offer(&mut self, item: T) {
        self.offer_with(|| item);
    }

    /// Items offered so far.
    pub fn seen(&self) -> u64 {
        self.seen
    }

    /// The sample, in reservoir order.
    pub fn into_items(self) -> Vec<T> {
        self.items
    }

    /// The sample, in reservoir order.
    pub fn items(&self) -> &[T] {
        &self.items
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_everything_below_capacity_and_a_bounded_uniform_sample_above() {
        let mut small = Reservoir::new(10, 7);
        (0..5).for_each(|i| small.offer(i));
        assert_eq!(small.into_items(), vec![0, 1, 2, 3, 4]);

        let mut big = Reservoir::new(1000, 7);
        (0..100_000u32).for_each(|i| big.offer(i));
        assert_eq!(big.seen(), 100_000);
        let items = big.items().to_vec();
        assert_eq!(items.len(), 1000);
        // Uniform: about a tenth of the sample in each tenth of the stream.
        for decile in 0..10 {
            let n = items.iter().filter(|&&i| i / 10_000 == decile).count();
            assert!((60..=140).contains(&n), "decile {decile}: {n}");
        }
        let mut again = Reservoir::new(1000, 7);
        (0..100_000u32).for_each(|i| again.offer(i));
        assert_eq!(
            again.into_items(),
            items,
            "same stream, same seed, same sample"
        );
        let mut other = Reservoir::new(1000, 8);
        (0..100_000u32).for_each(|i| other.offer(i));
        assert_ne!(other.into_items(), items);
    }
}
