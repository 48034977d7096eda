"""User-facing errors: the CLI prints them as one line and exits with code 2."""


class UserError(Exception):
    """A mistake in the user's input (file, config, data). Message = one line naming file, row, column."""


def data_error(path, row=None, column=None, problem: str = "") -> UserError:
    """Build the canonical one-line data error: '<file>: row <r>, column <c>: <problem>'."""
    where = [str(path)]
    loc = []
    if row is not None:
        loc.append(f"row {row}")
    if column is not None:
        loc.append(f"column '{column}'")
    msg = where[0] + (": " + ", ".join(loc) if loc else "")
    return UserError(f"{msg}: {problem}")
