"""Data: EuroSAT loading and splits, labelled image folders, batch iteration."""
