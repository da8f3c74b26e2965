"""One exception type for bad user input: the CLI prints its message alone, without a traceback."""


class InputError(ValueError):
    """Bad user input (a file, a config key, a split). The message names the file/key and the problem."""

    def __init__(self, where: object, problem: str):
        self.where = str(where)
        self.problem = problem
        super().__init__(f"{self.where}: {problem}")
