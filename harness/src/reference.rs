//! The one build of the C reference (the seed's server, `harness/reference/server.c`). Its source
//! is compiled into the harness, so a harness binary builds it wherever it runs; scripts get it
//! through `portfwd-compare --build-reference PATH`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The C source of the reference.
pub const SOURCE: &str = include_str!("../reference/server.c");

/// Where the harness keeps the reference by default: `reference/server` in the target directory
/// that holds `exe` (a harness binary in `<target>/<profile>/`), or in `./target`.
pub fn default_path(exe: Option<&Path>) -> PathBuf {
    let target = exe
        .and_then(|e| e.parent()?.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("target"));
    target.join("reference/server")
}

/// Builds the reference into `out` with `cc -O2 -fopenmp`, unless `out` was built from this
/// very source (kept beside it as `out.c`). Safe to call from several processes at once: each
/// writes and compiles temporary files of its own, then renames them into place.
pub fn build(out: &Path) -> Result<PathBuf, String> {
    let src = out.with_extension("c");
    let fresh = |p: &Path| fs::metadata(p).and_then(|m| m.modified()).ok();
    if fs::read_to_string(&src).is_ok_and(|s| s == SOURCE)
        && let (Some(bin), Some(c)) = (fresh(out), fresh(&src))
        && bin >= c
    {
        return Ok(out.to_path_buf());
    }
    if let Some(dir) = out.parent() {
        fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let id = std::process::id();
    let tmp_src = out.with_extension(format!("tmp{id}.c"));
    let tmp_bin = out.with_extension(format!("tmp{id}"));
    fs::write(&tmp_src, SOURCE).map_err(|e| format!("cannot write {}: {e}", tmp_src.display()))?;
    let status = Command::new("cc")
        .args(["-O2", "-fopenmp", "-o"])
        .arg(&tmp_bin)
        .arg(&tmp_src)
        .status()
        .map_err(|e| format!("cannot run cc: {e}"));
    let built = match status {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => Err(format!("cc -O2 -fopenmp failed on the C reference ({s})")),
        Err(e) => Err(e),
    };
    let done = built.and_then(|()| {
        // The binary first: a source beside an older binary means "rebuild".
        fs::rename(&tmp_bin, out).map_err(|e| format!("cannot rename to {}: {e}", out.display()))?;
        fs::rename(&tmp_src, &src).map_err(|e| format!("cannot rename to {}: {e}", src.display()))
    });
    let _ = fs::remove_file(&tmp_src);
    let _ = fs::remove_file(&tmp_bin);
    done.map(|()| out.to_path_buf())
}
