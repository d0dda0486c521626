//! Credit-based flow control of one vsock stream (virtio 1.2, 5.10.6.3). Each side says how
//! big its receive buffer is (`buf_alloc`) and how much of it it has consumed (`fwd_cnt`,
//! a wrapping counter); a sender may have at most `peer_buf_alloc - (sent - peer_fwd_cnt)`
//! bytes outstanding. So a slow reader on either side makes the other wait instead of making
//! anyone buffer without bound.

use std::num::Wrapping;

/// The receive buffer the host side advertises per connection: what a guest may have sent
/// and the host socket not yet taken (the host side buffers at most this much).
pub const HOST_BUF_ALLOC: u32 = 64 << 10;
/// Send a CREDIT_UPDATE unasked once less than this much of the advertised credit is left.
pub const UPDATE_THRESHOLD: u32 = 4 << 10;

/// The credit state of one connection, host side.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Credit {
    /// Bytes of the guest's payload forwarded to the host socket.
    fwd_cnt: Wrapping<u32>,
    /// `fwd_cnt` as the guest last heard it.
    fwd_cnt_told: Wrapping<u32>,
    /// Bytes sent to the guest.
    rx_cnt: Wrapping<u32>,
    /// The guest's receive buffer and what it has consumed of our payload.
    peer_buf_alloc: u32,
    peer_fwd_cnt: Wrapping<u32>,
}

impl Credit {
    /// Takes the guest's numbers from any packet it sent.
    pub fn peer_says(&mut self, buf_alloc: u32, fwd_cnt: u32) {
        self.peer_buf_alloc = buf_alloc;
        self.peer_fwd_cnt = Wrapping(fwd_cnt);
    }

    /// How many bytes we may still send the guest. A guest whose numbers make no sense (it
    /// claims to have consumed more than we sent) gets none until they do.
    pub fn peer_credit(&self) -> u32 {
        let in_flight = (self.rx_cnt - self.peer_fwd_cnt).0;
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// We sent the guest `n` payload bytes.
    pub fn sent(&mut self, n: u32) {
        self.rx_cnt += Wrapping(n);
    }

    /// We forwarded `n` of the guest's bytes to the host socket.
    pub fn forwarded(&mut self, n: u32) {
        self.fwd_cnt += Wrapping(n);
    }

    /// Whether the guest may send `len` more bytes without overrunning what we advertised
    /// (`buffered`: its bytes we hold, not yet written to the host socket).
    pub fn guest_may_send(&self, buffered: u32, len: u32) -> bool {
        buffered.saturating_add(len) <= HOST_BUF_ALLOC
    }

    /// The numbers to put in a packet to the guest (and the guest now knows them).
    pub fn tell(&mut self) -> (u32, u32) {
        self.fwd_cnt_told = self.fwd_cnt;
        (HOST_BUF_ALLOC, self.fwd_cnt.0)
    }

    /// Whether to send a CREDIT_UPDATE unasked: the guest believes less than the threshold
    /// is left, though we have forwarded more.
    pub fn update_due(&self) -> bool {
        let unannounced = (self.fwd_cnt - self.fwd_cnt_told).0;
        HOST_BUF_ALLOC.saturating_sub(unannounced) < UPDATE_THRESHOLD
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn we_never_send_more_than_the_guest_can_take() {
        let mut c = Credit::default();
        assert_eq!(c.peer_credit(), 0, "nothing before the guest says how much");
        c.peer_says(16 << 10, 0);
        assert_eq!(c.peer_credit(), 16 << 10);
        c.sent(12 << 10);
        assert_eq!(c.peer_credit(), 4 << 10);
        c.sent(4 << 10);
        assert_eq!(c.peer_credit(), 0, "a slow guest reader stops us");
        c.peer_says(16 << 10, 8 << 10);
        assert_eq!(c.peer_credit(), 8 << 10, "its reading makes room");
        c.peer_says(16 << 10, 40 << 10); // claims more than we ever sent
        assert_eq!(c.peer_credit(), 0);
    }

    #[test]
    fn counters_wrap_as_the_spec_says() {
        let mut c = Credit::default();
        c.sent(u32::MAX - 10);
        c.peer_says(64 << 10, u32::MAX - 10);
        c.sent(100); // rx_cnt wraps past zero
        assert_eq!(c.peer_credit(), (64 << 10) - 100);
    }

    #[test]
    fn credit_updates_are_due_when_the_guest_is_nearly_out() {
        let mut c = Credit::default();
        assert_eq!(c.tell(), (HOST_BUF_ALLOC, 0));
        c.forwarded(HOST_BUF_ALLOC - UPDATE_THRESHOLD);
        assert!(!c.update_due());
        c.forwarded(1);
        assert!(c.update_due());
        assert_eq!(c.tell().1, HOST_BUF_ALLOC - UPDATE_THRESHOLD + 1);
        assert!(!c.update_due(), "told");
        assert!(c.guest_may_send(HOST_BUF_ALLOC - 10, 10));
        assert!(!c.guest_may_send(HOST_BUF_ALLOC - 10, 11));
    }
}
