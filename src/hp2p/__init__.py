"""hp2p: ITU-T Q.4100–Q.4103 hybrid peer-to-peer communications.

The package is laid out by reference point and functional entity; see README.md for the
table that maps each Q.4100 FE to its module.
"""

__version__ = "0.1.0"
