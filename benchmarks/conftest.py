"""Options shared by the benchmarks."""


def pytest_addoption(parser):
    parser.addoption("--device", default="cpu", help="device to benchmark on: cpu or cuda[:N]")
