//! `egress-filter generate-docs DIR` (hidden): the man pages and shell completions, generated
//! from the command line's own definition so they never drift from it. `cargo xtask dist` runs
//! it for the package.
//!
//! ```text
//! DIR/man/egress-filter.1, egress-filter-run.1, ...   one page per verb
//! DIR/completions/egress-filter.bash, _egress-filter, egress-filter.fish
//! ```

use std::path::Path;

use anyhow::Context as _;
use clap_complete::Shell;

/// The shells a completion script is written for, and its file name (what each shell's
/// vendor directory expects).
const SHELLS: [(Shell, &str); 3] = [
    (Shell::Bash, "egress-filter"),
    (Shell::Zsh, "_egress-filter"),
    (Shell::Fish, "egress-filter.fish"),
];

/// Writes the man pages and completions of `command` under `dir`; returns the files written.
pub fn write(command: &clap::Command, dir: &Path) -> anyhow::Result<Vec<std::path::PathBuf>> {
    let mut written = Vec::new();
    let man = dir.join("man");
    std::fs::create_dir_all(&man).with_context(|| format!("cannot create {}", man.display()))?;
    for page in man_pages(command) {
        let path = man.join(format!("{}.1", page.get_name()));
        let mut roff = Vec::new();
        clap_mangen::Man::new(page).render(&mut roff)?;
        std::fs::write(&path, roff).with_context(|| format!("cannot write {}", path.display()))?;
        written.push(path);
    }
    let completions = dir.join("completions");
    std::fs::create_dir_all(&completions)
        .with_context(|| format!("cannot create {}", completions.display()))?;
    for (shell, file) in SHELLS {
        let path = completions.join(file);
        let mut script = Vec::new();
        clap_complete::generate(shell, &mut command.clone(), "egress-filter", &mut script);
        std::fs::write(&path, script)
            .with_context(|| format!("cannot write {}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}

/// The top-level page and one per visible verb, named the git way (`egress-filter-run`), each
/// with the full usage line of the verb.
fn man_pages(command: &clap::Command) -> Vec<clap::Command> {
    let mut command = command.clone();
    command.build();
    let name = command.get_name().to_owned();
    let version = command.get_version().unwrap_or_default().to_owned();
    let verbs = command
        .get_subcommands()
        // `help` is clap's own, and needs no page.
        .filter(|verb| !verb.is_hide_set() && verb.get_name() != "help")
        .map(|verb| {
            let page = format!("{name}-{}", verb.get_name());
            verb.clone()
                .name(page.clone())
                .bin_name(page)
                .version(version.clone())
        });
    std::iter::once(command.clone()).chain(verbs).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example() -> clap::Command {
        clap::Command::new("egress-filter")
            .version("1.0")
            .subcommand(clap::Command::new("run").about("Enforce the rules"))
            .subcommand(clap::Command::new("secret").hide(true))
    }

    #[test]
    fn writes_a_page_per_visible_verb_and_every_completion() {
        let dir = std::env::temp_dir().join(format!("docs-test-{}", std::process::id()));
        let written = write(&example(), &dir).expect("written");
        let names: Vec<String> = written
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            [
                "egress-filter.1",
                "egress-filter-run.1",
                "egress-filter",
                "_egress-filter",
                "egress-filter.fish"
            ]
        );
        let run = std::fs::read_to_string(dir.join("man/egress-filter-run.1")).unwrap();
        assert!(run.contains("Enforce the rules"), "{run}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
