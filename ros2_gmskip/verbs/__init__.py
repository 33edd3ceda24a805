"""One module per `ros2-gmskip` verb: `HELP`, `add_arguments(parser)`, `main(args) -> int`."""
