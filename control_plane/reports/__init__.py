"""The version report: what a candidate engine buys over the baseline, per GPU architecture."""
