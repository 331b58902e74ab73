import KilnModels
