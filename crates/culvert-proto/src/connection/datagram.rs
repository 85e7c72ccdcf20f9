//! Bounded drop-oldest datagram queue: UDP prefers fresh data, and a slow reader never grows memory.

use std::collections::VecDeque;

use bytes::Bytes;

/// A FIFO of `(flow, payload)` with a count and a byte bound; overflow evicts the oldest.
#[derive(Debug)]
pub(crate) struct DatagramQueue {
    items: VecDeque<(u64, Bytes)>,
    bytes: usize,
    max_len: usize,
    max_bytes: usize,
    /// Datagrams evicted to make room.
    pub(crate) dropped: u64,
}

impl DatagramQueue {
    pub(crate) fn new(max_len: usize, max_bytes: usize) -> DatagramQueue {
        DatagramQueue {
            items: VecDeque::new(),
            bytes: 0,
            max_len,
            max_bytes,
            dropped: 0,
        }
    }

    /// Queues a datagram, evicting the oldest while over a bound. Returns whether the queue was empty before.
    pub(crate) fn push(&mut self, flow: u64, data: Bytes) -> bool {
        let was_empty = self.items.is_empty();
        self.bytes += data.len();
        self.items.push_back((flow, data));
        // Evict oldest first; a datagram larger than the whole byte budget evicts itself.
        while self.items.len() > self.max_len || self.bytes > self.max_bytes {
            if let Some((_, d)) = self.items.pop_front() {
                self.bytes -= d.len();
                self.dropped += 1;
            }
        }
        was_empty
    }

    pub(crate) fn pop(&mut self) -> Option<(u64, Bytes)> {
        let item = self.items.pop_front()?;
        self.bytes -= item.1.len();
        Some(item)
    }

    pub(crate) fn front_len(&self) -> Option<usize> {
        self.items.front().map(|(_, d)| d.len())
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.items.len()
    }

    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drops_oldest_and_counts() {
        let mut q = DatagramQueue::new(2, 100);
        q.push(1, Bytes::from_static(b"a"));
        q.push(2, Bytes::from_static(b"b"));
        q.push(3, Bytes::from_static(b"c"));
        assert_eq!(q.dropped, 1);
        assert_eq!(q.pop().unwrap().0, 2);
        let mut q = DatagramQueue::new(10, 4);
        q.push(1, Bytes::from_static(b"aaa"));
        q.push(2, Bytes::from_static(b"bbb"));
        assert_eq!((q.len(), q.bytes(), q.dropped), (1, 3, 1));
        q.push(3, Bytes::from_static(b"too big"));
        assert_eq!((q.len(), q.bytes(), q.dropped), (0, 0, 3));
    }
}
