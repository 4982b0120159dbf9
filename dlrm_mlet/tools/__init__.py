"""Tools around training: synthetic data, sweeps and reports, inspection, verification, spectra, monitoring."""
