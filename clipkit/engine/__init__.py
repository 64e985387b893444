"""Engines that spread a command's work beyond this process: ``cluster`` (Ray) is the only
module that imports Ray, which only ``pip install "clipkit[ray]"`` installs."""
