"""Labs: small games you can watch. `lab1d` draws Figure 1 of Goodfellow et al. (2014);
`lab2d` pits mode-collapse remedies (`remedies.REMEDIES`) against the ring and grid mixtures."""
