//! The codes StreamReset and GoAway carry (see PROTOCOL.md).

/// Reset codes carried by StreamReset (see PROTOCOL.md).
pub mod reset_code {
    /// The application abandoned the stream.
    pub const CANCEL: u64 = 0;
    /// The receiver would not take the stream (going away, or over a limit).
    pub const REFUSED: u64 = 1;
    /// The target of the stream could not be reached.
    pub const CONNECT_FAILED: u64 = 2;
    /// The stream's transport failed (for example its WebSocket died).
    pub const INTERNAL: u64 = 3;
    /// The opener's token may not reach the target, or the target is outside the
    /// receiver's allow-list.
    pub const NOT_ALLOWED: u64 = 4;
    /// No service of that name is registered.
    pub const UNKNOWN_TARGET: u64 = 5;
    /// The service exists but its agent has no live connection.
    pub const UNAVAILABLE: u64 = 6;

    /// A short human reason for `code`, for error messages and logs.
    pub fn describe(code: u64) -> &'static str {
        match code {
            CANCEL => "cancelled",
            REFUSED => "refused",
            CONNECT_FAILED => "target could not be reached",
            INTERNAL => "transport failed",
            NOT_ALLOWED => "not allowed",
            UNKNOWN_TARGET => "no such service",
            UNAVAILABLE => "service unavailable (its agent is offline)",
            _ => "unknown reason",
        }
    }
}

/// Codes carried by GoAway (see PROTOCOL.md §15.2).
pub mod goaway_code {
    /// An orderly shutdown.
    pub const NO_ERROR: u64 = 0;
    /// The peer made this side exceed a limit (its control queue, the resets it generates);
    /// the connection closes after this GoAway (HTTP/2's ENHANCE_YOUR_CALM).
    pub const ENHANCE_YOUR_CALM: u64 = 1;
}
