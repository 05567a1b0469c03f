//! Keeps Mesa quiet: its drivers print `error: XDG_RUNTIME_DIR is invalid or not set`
//! whenever that variable is missing (as on servers and in CI), which reads like an mcgrad
//! error and floods test and bench output. [`quiet_mesa`] gives them a private folder; the
//! GPU context calls it before it makes an instance, so the binary, the tests and the
//! benches are all covered.

use std::sync::Once;

/// Sets `XDG_RUNTIME_DIR` to a private folder (`$TMPDIR/mcgrad-runtime-UID`, mode 0700) if it
/// is unset. Runs once per process; later calls return at once. Call it before any adapter
/// exists (the GPU context does).
pub fn quiet_mesa() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if std::env::var_os("XDG_RUNTIME_DIR").is_some() {
            return;
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
            let uid = std::fs::metadata("/proc/self")
                .map(|m| m.uid())
                .unwrap_or(0);
            let dir = std::env::temp_dir().join(format!("mcgrad-runtime-{uid}"));
            let _ = std::fs::DirBuilder::new().mode(0o700).create(&dir);
            let private = std::fs::metadata(&dir)
                .map(|m| m.is_dir() && m.uid() == uid && m.permissions().mode() & 0o777 == 0o700)
                .unwrap_or(false);
            if private {
                std::env::set_var("XDG_RUNTIME_DIR", dir);
            }
        }
    });
}
