"""What the launchers read in the command they run (imported by the scripts beside it)."""


def refuse_a_second_workdir(parser, command: list[str], workdir: str) -> None:
    """A launcher adds --workdir to the command; one the command gives too would be dropped
    without a word (absl takes the last), so it is refused, naming both."""
    theirs = workdir_in_command(command)
    if theirs is not None:
        parser.error(f"the command gives --workdir={theirs}, and the launcher adds its own "
                     f"--workdir={workdir}; give the workdir once, as the launcher's --workdir")


def workdir_in_command(command: list[str]) -> str | None:
    """The value of a --workdir flag the command gives (`--workdir=X` or `--workdir X`; absl
    also reads one dash), else None."""
    for i, word in enumerate(command):
        name, equals, value = word.partition("=")
        if name in ("--workdir", "-workdir"):
            return value if equals else (command[i + 1] if i + 1 < len(command) else "")
    return None
