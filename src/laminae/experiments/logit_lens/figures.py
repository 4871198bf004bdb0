"""placeholder"""


def plot(job):
    raise NotImplementedError
